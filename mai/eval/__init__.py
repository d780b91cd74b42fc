"""Evaluation: perplexity / bits per byte and lm-evaluation-harness-compatible benchmark tasks."""
