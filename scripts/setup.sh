#!/usr/bin/env bash
# Set up everything vlmviz needs on a fresh machine, idempotently (a second run takes seconds).
#   bash scripts/setup.sh          -> .venv with the package's requirements (enough for the app and notebooks)
#   bash scripts/setup.sh --test   -> also Debian's chromium for the browser tests and the optional search extras
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
# The built-in connectors (photo concepts, scenes), so the app opens with trained connectors ready: about 2 minutes
# once, then skipped while the installed requirements and the files holding their recipes are unchanged and the
# checkpoints are still in the cache ($VLMVIZ_CACHE/connectors, where the app and the tests read them).
cstamp=.venv/.vlmviz-connectors
cwant=$({ cat "$stamp" vlmviz/builtins.py vlmviz/runs/concepts.py vlmviz/runs/scene_connector.py; echo "${VLMVIZ_CACHE:-}"; } \
        | sha1sum | cut -d' ' -f1)
connectors_built() {  # the stamp matches and every checkpoint it lists is still there
  [ "$(head -n 1 "$cstamp" 2>/dev/null)" = "$cwant" ] || return 1
  local n=0 p
  while IFS= read -r p; do [ -f "$p" ] || return 1; n=$((n + 1)); done < <(tail -n +2 "$cstamp")
  [ "$n" -gt 0 ]
}
if ! connectors_built; then
  echo "[setup] building the built-in connectors (about 2 minutes on a fresh machine)"
  .venv/bin/python scripts/build_connectors.py --list "$cstamp.paths"
  { echo "$cwant"; cat "$cstamp.paths"; } > "$cstamp" && rm -f "$cstamp.paths"
fi
# Optional extras for library search at scale (Ray Data, LanceDB): about 45 s, for the tests of those paths.
estamp=.venv/.vlmviz-extras
ewant=$(cat "$stamp" requirements-extras.txt | sha1sum | cut -d' ' -f1)
if [ "${1:-}" = "--test" ] && [ -z "${VLMVIZ_NO_EXTRAS:-}" ] && [ "$(cat "$estamp" 2>/dev/null)" != "$ewant" ]; then
  echo "[setup] installing the optional search extras (Ray Data, LanceDB)"
  if .venv/bin/pip install --disable-pip-version-check -q -r requirements-extras.txt 2>&1 \
       | grep -v "is ignored: it is neither"; then :; fi
  .venv/bin/python -c "import ray.data, lancedb" && echo "$ewant" > "$estamp" \
    || echo "[setup] the search extras did not install; their tests will say so and skip" >&2
fi
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
  echo "[setup] installing Debian chromium for the browser tests"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "[setup] ready"
