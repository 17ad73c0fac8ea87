#!/usr/bin/env bash
# Set up everything vlmviz needs on a fresh machine, idempotently (a second run takes seconds).
#   bash scripts/setup.sh          -> .venv with the package's requirements (enough for the app and notebooks)
#   bash scripts/setup.sh --test   -> also Debian's chromium for the browser tests
# torch comes from the CPU wheel on this machine's disk (requirements.txt pins torch==2.13.0; see DESIGN.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.vlmviz-requirements
want=$(cat requirements.txt requirements-nodeps.txt pyproject.toml | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python requirements (about 3 minutes on a fresh machine)"
  .venv/bin/pip install --disable-pip-version-check -q -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" || true
  .venv/bin/python -c "import vlmviz, torch, transformers, gradio, onnx, gguf, sentence_transformers" \
    || { echo "[setup] requirements did not install; see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
  echo "[setup] installing Debian chromium for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "[setup] ready"
