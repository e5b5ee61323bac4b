#!/usr/bin/env bash
# Sets up .venv (see infra/setup.sh), then lints, type-checks and runs the whole test suite on
# CPU (`make check`). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
exec make check PYTEST_ARGS="$*"
