"""Ollama Modelfiles, read exactly as Ollama reads them: `parser` (decoding, the ParseFile state
machine, the Modelfile type, typed parameters) and `values` (PARAMETER values typed as Ollama types
them). Foundation layer, so resolving a model and exporting one share this one parser."""
