"""Flags that several subcommands share, defined once so they read the same everywhere."""

from __future__ import annotations

import argparse


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="compute dtype; auto: bf16 only where it measures faster on this machine")


def add_config_flags(p: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE`` plus dotted ``KEY=VALUE`` overrides: the typed-config convention of mai."""
    p.add_argument("--config", help=f"a YAML run config (see {example})")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
