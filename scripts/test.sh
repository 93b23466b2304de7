#!/usr/bin/env bash
# The test command (README, and what CI runs through .ci/run): set up, lint, type-check, then run the
# whole suite. Extra arguments go to pytest.
#   SELFREID_TEST_RANDOM=1 bash scripts/test.sh   the same in random test order (pytest-randomly; the
#                                                 seed is printed: SELFREID_TEST_SEED=N replays one order)
#   bash scripts/refresh_reliability_doc.sh       the same, and rewrite docs/reliability.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
# Real tools the tests use: docker-compose 1.29 (compose validation), hadolint, GStreamer + PyGObject.
bash scripts/ci_tools.sh
bash scripts/system_deps.sh
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/.yolo"
bash scripts/lint.sh
order=(-p no:randomly)
if [ "${SELFREID_TEST_RANDOM:-0}" = "1" ]; then
  seed="${SELFREID_TEST_SEED:-$RANDOM}"
  echo "random test order: --randomly-seed=$seed (SELFREID_TEST_SEED=$seed replays it)"
  order=(-p randomly "--randomly-seed=$seed")
fi
# Free disk where the tests write (pytest's temp folders, the work tree): a full disk shows up as
# errors in every test that makes a folder, and this names the cause (-q hides pytest's header).
df -h "${TMPDIR:-/tmp}" . | sed 's/^/disk: /'
set +e
# The reliability table of this run goes to the build folder, so a test run never dirties the work
# tree ("--opt=value": a separate value would be taken for a test path before tests/conftest.py,
# which defines the option, is loaded).
.venv/bin/python -m pytest -q "${order[@]}" --reliability-doc="${SELFREID_RELIABILITY_DOC:-build/reliability.md}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
