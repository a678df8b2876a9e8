"""``interns1 serve``: the OpenAI- and Ollama-compatible HTTP server on the engine."""
