#!/usr/bin/env bash
# Lint and type-check (part of the test command): ruff (pyflakes, pycodestyle, import order, bugbear,
# pyupgrade) on the whole tree; mypy strict on plugins/contracts.py and reid_model/, normal elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m ruff check .
# The folders install as selfreid.pipeline / selfreid.reid_model / selfreid.plugins (setuptools
# package-dir), which mypy cannot follow through an editable install: it reads them through a tree
# of links that has the installed names.
tree=build/typecheck/selfreid
mkdir -p "$tree"
for folder in pipeline reid_model plugins; do
  ln -sfn "../../../$folder" "$tree/$folder"
done
(cd build/typecheck && ../../.venv/bin/python -m mypy --config-file ../../pyproject.toml \
  -p selfreid.reid_model -p selfreid.plugins -p selfreid.pipeline)
