#!/usr/bin/env bash
# benchmarks/gpu_check.py, after installing the wheels found in .whl/ (for a GPU machine without
# network whose Python lacks diffusers and datasets; docs/gpu_check.md says more).
#
#   benchmarks/gpu_check.sh --out gpu_check        # on the GPU machine; takes gpu_check.py's arguments
#   benchmarks/gpu_check.sh download-wheels        # beforehand, with network: fill .whl/ (git-ignored)
#
# download-wheels fetches, for CPython $WHEEL_PYTHON (default 3.12) on manylinux x86-64, the versions
# of these packages installed in the Python running it (the ones the tests ran against), without
# their dependencies: a machine with torch, accelerate and huggingface_hub needs only these.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=(diffusers datasets dill multiprocess)

if [[ "${1:-}" == download-wheels ]]; then
  mkdir -p .whl
  for name in "${WHEELS[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))" "$name")
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "$name==$version"
  done
  ls -l .whl
  exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  site=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" -m benchmarks.gpu_check "$@"
