#!/usr/bin/env bash
# The test command: set up the venv if needed, then ruff, mypy and pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k store -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh

echo "[steer-sweep] ruff" >&2
ruff format --check .
ruff check .
echo "[steer-sweep] mypy" >&2
mypy
echo "[steer-sweep] pytest" >&2
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "[steer-sweep] pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
