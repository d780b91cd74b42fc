from tests.eval.conftest import tiny_dir  # noqa: F401  (a tiny model with MAI's chat template)
