#!/usr/bin/env bash
# Sets up .venv (see infra/setup.sh) and runs the main job on the embedded default: the bundled
# demo model on CPU, local folder storage (./i2s-demo). Extra arguments go to `i2s demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
exec .venv/bin/i2s demo "$@"
