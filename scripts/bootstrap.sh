# Sourced by every script: create .venv/ at the repository root with the pinned dependencies
# and this project installed, once (again whenever requirements.lock or pyproject.toml change).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"
stamp_of() { cat "$REPO_ROOT/requirements.lock" "$REPO_ROOT/pyproject.toml" | sha256sum | cut -c1-16; }
STAMP="$VENV/.mmrerank-$(stamp_of)"
if [ ! -f "$STAMP" ]; then
  echo "[setup] preparing $VENV (pinned dependencies; first run takes a few minutes)" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -r "$REPO_ROOT/requirements.lock" >&2
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$REPO_ROOT" >&2
  rm -f "$VENV"/.mmrerank-*
  touch "$STAMP"
  echo "[setup] done" >&2
fi
export PATH="$VENV/bin:$PATH"
