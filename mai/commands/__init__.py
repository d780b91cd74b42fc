"""The ``mai`` subcommands, one module per stage of the life-cycle.

Each module has ``register(sub)``: it adds its subcommand(s) to the argparse subparsers object, with the
flags next to the handler that reads them, and imports its heavy parts only inside the handler, so
``mai --help`` and a typo cost no torch import. :data:`MODULES` is the order ``mai --help`` lists them in.
"""

MODULES = ("model", "train", "plan", "generate", "convert", "serve", "safety", "data", "post", "grpo", "eval",
           "recipe")
