"""The runtime: chat-template rendering, streaming output parsing and image loading for llama.cpp generation."""
