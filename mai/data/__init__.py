"""Data: documents → tokenized shards on disk → batches for training.

``corpus`` finds the default offline corpus, ``prepare`` reads and tokenizes documents, ``shards`` is the
on-disk token format, ``sampler`` turns token datasets into deterministic, resumable training batches.
"""
