#!/usr/bin/env bash
# Run the test command and write this run's fault / bad-input / security table to docs/reliability.md
# (the page is generated from the tests, never edited by hand; commit it after a green run).
set -euo pipefail
cd "$(dirname "$0")/.."
SELFREID_RELIABILITY_DOC=docs/reliability.md exec bash scripts/test.sh "$@"
