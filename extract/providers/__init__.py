"""How we talk to models: local weights (``local_model``) and OpenAI-compatible endpoints."""
