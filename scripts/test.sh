#!/usr/bin/env bash
# Install what the tests need, then run every test: unit, pyz, real containers (podman), all
# CPython versions. Exits non-zero on any failure, and when pytest ran no test at all.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k container -x`).
set -euo pipefail

cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

PYTHON="${PYTHON:-python3}"
# A hung test must not eat CI's whole budget: SIGINT first so pytest still prints its summary.
LIMIT="${SMSUPER_TEST_TIME_LIMIT:-3000}"

set +e
timeout --signal=INT --kill-after=60 "$LIMIT" \
    "$PYTHON" -m pytest -ra --durations=20 --durations-min=1.0 "$@" </dev/null
status=$?
set -e

case "$status" in
    0) ;;
    5) echo "test.sh: pytest collected no tests; that is a failure" >&2; status=1 ;;
    124) echo "test.sh: the test run exceeded ${LIMIT}s and was interrupted" >&2 ;;
    *) echo "test.sh: pytest exited $status" >&2 ;;
esac
exit "$status"
