#!/usr/bin/env bash
# MFU and tokens/s of a ~1B dense model and a small MoE on one H100 (bf16 autocast, torch.compile),
# against the 989 TFLOP/s dense bf16 peak. Takes under 5 minutes (compile included).
#   bash benchmarks/gpu_mfu.sh                # on the GPU machine
#   bash benchmarks/gpu_mfu.sh --dry-run      # on CPU: tiny shapes, no compile (what CI runs)
# Paste the printed table into docs/benchmarks.md with the machine, the command and the date.
set -euo pipefail
. "$(dirname "$0")/gpu_preamble.sh" "$@"
exec timeout 290 python benchmarks/gpu_mfu.py "$@"
