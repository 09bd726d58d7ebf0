"""Chat formats: Ollama's Go template language and the table of chat families."""
