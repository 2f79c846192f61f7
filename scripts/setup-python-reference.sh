#!/usr/bin/env bash
# Installs the Python reference stack (torch, transformers, trl, peft, safetensors, tokenizers,
# pandas for FastChat's result tables, and tensorboard to read back the event files report_to
# writes) into
# .venv-ref for the conformance tests and peer benchmarks. These are never runtime dependencies
# of zephyr-native. Where pip cannot get them, the conformance tests skip with a message.
# ZN_PIP_ARGS adds pip options (e.g. an --index-url for a local mirror).
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(torch transformers trl peft safetensors tokenizers tensorboard pandas)
if [[ -x .venv-ref/bin/python ]] && .venv-ref/bin/python -c "import torch, transformers, trl, peft, safetensors, tokenizers, tensorboard, pandas" 2>/dev/null; then
  echo "reference Python stack already in .venv-ref"
  exit 0
fi
python3 -m venv .venv-ref
pip_args=(${ZN_PIP_ARGS:-})
# This project's machines have a local package index and no PyPI: prefer it when present.
if [[ -d /opt/pypi/simple ]]; then
  pip_args+=(--index-url file:///opt/pypi/simple)
  [[ -d /opt/pypi-more/simple ]] && pip_args+=(--extra-index-url file:///opt/pypi-more/simple)
fi
.venv-ref/bin/pip install -q --disable-pip-version-check "${pip_args[@]}" "${packages[@]}"
.venv-ref/bin/python -c "import torch, transformers, trl; print('reference stack: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__)"
