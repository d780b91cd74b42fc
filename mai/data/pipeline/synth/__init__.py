"""Synthetic documents from a teacher model over any OpenAI-compatible chat API (``mai data synth``).

Prompts come from topic × style × audience templates or from seed documents; requests run with bounded
concurrency under requests- and tokens-per-minute limits, retry with backoff on 429/5xx/timeouts, and are
cached by request in SQLite so that a re-run (or a run resumed after a kill) never pays twice. The
generations, with their provenance, then go through the same pipeline steps as web text.
"""
