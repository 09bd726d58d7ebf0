"""Ollama Modelfiles for export: `checks` makes the checks `ollama create` makes after parsing (a
TEMPLATE must be a Go template Ollama can parse), `writer` renders and builds them (proven by
parsing them back). The parser itself is toolkit/modelfile/."""
