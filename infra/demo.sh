#!/usr/bin/env bash
# Sets up .venv (see infra/setup.sh) and runs the main job on the embedded default: the bundled
# demo model on CPU, local folder storage (./i2s-demo). Extra arguments go to `i2s demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Run-time dependencies only (the test extras are for infra/test.sh).
I2S_EXTRAS="${I2S_EXTRAS-}" bash infra/setup.sh
exec .venv/bin/i2s demo "$@"
