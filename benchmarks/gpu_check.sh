#!/usr/bin/env bash
# One-GPU check of MAI's GPU path (H100/H200, under 10 minutes): trains the 1b preset (4 layers) and
# moe-demo in bf16 with torch.compile and reports tokens/s, MFU and peak memory against `mai plan`'s
# prediction; SIGKILLs a `mai train` run and resumes it; exercises async checkpointing; pipeline
# parallel where mai has parallel.pp (else skipped with the reason). Writes runs/gpu_check/summary.json.
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # on CPU: tiny shapes, seconds (what CI runs)
set -euo pipefail
. "$(dirname "$0")/gpu_preamble.sh" "$@"
exec timeout 590 python benchmarks/gpu_check.py "$@"
