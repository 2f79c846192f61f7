#!/usr/bin/env bash
# Packs the Python wheels the device check's TRL side needs and the device image lacks (KINDS.md:
# it has torch, transformers and accelerate, not trl or datasets) into .device/wheels, which a
# device run carries with `carry: [".device"]`. Run it after ../shared/device/prepare.sh:
#   bash bench/device-wheels.sh
# The versions are the reference stack's here (.venv-ref or python3), so the GPU comparison runs
# the TRL the CPU conformance tests check against. All four are pure-Python wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${ZN_PYTHON:-$([[ -x .venv-ref/bin/python ]] && echo .venv-ref/bin/python || echo python3)}
mkdir -p .device/wheels
grep -qxF '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
specs=()
for name in trl datasets dill multiprocess; do
  version=$("$python" -c "import importlib.metadata as m; print(m.version('$name'))")
  specs+=("$name==$version")
done
rm -f .device/wheels/*.whl
"$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d .device/wheels "${specs[@]}"
ls -l .device/wheels | sed 's/^/wheel: /'
