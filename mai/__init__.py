"""MAI: build and own a large language model end to end."""

__version__ = "0.1.0"
