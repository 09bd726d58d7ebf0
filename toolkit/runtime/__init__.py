"""Running models: llama.cpp loading, the batched engine, and the backends (llama.cpp, Ollama, OpenAI)."""
