"""`mai serve`: an OpenAI-compatible HTTP server over the batched engine (see ``app.create_app``)."""
