#!/usr/bin/env bash
# The test command (README, and what CI runs through .ci/run): set up, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --dev
# Real tools the tests use: docker-compose 1.29 (compose validation), hadolint, GStreamer + PyGObject.
bash scripts/ci_tools.sh
bash scripts/system_deps.sh
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/.yolo"
set +e
# "--opt=value": a separate value would be taken for a test path before tests/conftest.py (which
# defines the option) is loaded, and pytest would reject the option.
.venv/bin/python -m pytest -q --reliability-doc=docs/reliability.md "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
