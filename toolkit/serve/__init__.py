"""The Ollama-compatible server (`toolkit serve`) with its OpenAI-style /v1 routes."""
