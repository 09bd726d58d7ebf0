"""Ollama Modelfiles: `parser` reads and checks them exactly as Ollama does, `values` types
PARAMETER values as Ollama does, `writer` renders and builds them (proven by parsing them back)."""
