#!/usr/bin/env bash
# The demo: set up, then run the main job on the bundled real data (`selfreid demo`).
#
# Sample videos as three cameras (configs/demo.yaml: PETS 2009 S2L1 split into two virtual cameras,
# its left and right halves, plus an indoor CC-BY clip). Every stage runs on this machine around the
# embedded Redis: ingest (YOLOX-nano + ByteTrack) fills the pool, the embedder serves model version 1
# (ImageNet MobileNetV2, exported to ONNX), the matcher assigns global identities, one self-training
# cycle adapts the model on the unlabelled pool (Selective Contrastive Learning), exports version 2
# and gates it: promoted when it passes, kept out of service with the reason when it does not. Then
# version 2 is measured against version 1 on labelled data and everything lands in one HTML report.
#
# Without the sample data beside the checkout, scripts/fetch_sample_data.sh provisions vtest.avi from
# Debian's opencv-doc package. Data goes to .selfreid/demo (its pool and models are emptied at the
# start of each run). About 5 minutes on 2 CPU cores after set-up; extra arguments go to
# `selfreid demo` (see `selfreid demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/.yolo"
export SELFREID_DATA_DIR="${SELFREID_DATA_DIR:-$PWD/.selfreid/demo}"
if [ ! -d "${SELFREID_SHARED_DATA:-../shared/data}" ]; then
  bash scripts/fetch_sample_data.sh
fi
.venv/bin/selfreid doctor --config configs/demo.yaml || true  # a missing optional capability (GStreamer) is not fatal
exec .venv/bin/selfreid demo --config configs/demo.yaml "$@"
