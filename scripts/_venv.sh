# Sourced by scripts/generate and scripts/test: make a virtual environment with a requirements file,
# once per change of that file. scripts/test: .venv with requirements-test.txt (the whole toolchain);
# scripts/generate: .venv-generate with requirements-generate.txt (cookiecutter only).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
REQUIREMENTS="${VENV_REQUIREMENTS:-$ROOT/requirements-test.txt}"
VENV="${VENV_DIR:-${TEMPLATE_VENV:-$ROOT/.venv}}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "ERROR: Python 3.11 or newer is needed (found $("$PYTHON" --version 2>&1)); set PYTHON=python3.11" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.$(basename "$REQUIREMENTS" .txt).sha256"
WANT="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS"
    echo "$WANT" > "$STAMP"
fi
