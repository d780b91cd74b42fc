#!/usr/bin/env bash
# Creates .venv (if needed) and installs MAI into it with the extras given as arguments.
# torch==2.13.0 goes first and explicitly: a bare "torch" requirement could pull a multi-GB CUDA build,
# while pyproject's range lets GPU users keep their own build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-corpus}"
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
pip_install() {  # pip's exit status is kept; only this machine's noisy index warnings are hidden
  python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
pip_install "torch==2.13.0"
pip_install -e ".[${extras}]"
if [ "$#" -gt 1 ]; then  # further arguments: packages installed without their dependencies
  pip_install --no-deps "${@:2}"
fi
python -c "import mai, torch; print(f'mai {mai.__version__} with torch {torch.__version__} in .venv')"
