#!/usr/bin/env bash
# The demo: set up, then run the main job on the bundled real data.
#
# Sample videos as three cameras (configs/demo.yaml: PETS 2009 S2L1 split into two virtual cameras,
# its left and right halves, plus an indoor CC-BY clip). Every stage runs
# on this machine around the embedded Redis: ingest (YOLOX-nano + ByteTrack) fills the pool, the
# embedder serves model version 1 (ImageNet MobileNetV2, exported to ONNX), the matcher assigns
# global identities, one self-training cycle adapts the model on the unlabelled pool (Selective
# Contrastive Learning), exports version 2 and gates it: promoted when it passes (the embedder then
# hot-swaps it), kept out of service with the reason when it does not.
# At the end: the model registry and an HTML report of the identities with their thumbnails.
#
# Data goes to .selfreid/demo (emptied at the start of each demo run). About 10-20 minutes on a
# 2-core laptop CPU; pass another site config as $1 to run that instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR="$PWD/.yolo"
export SELFREID_DATA_DIR="${SELFREID_DATA_DIR:-$PWD/.selfreid/demo}"
CONFIG="${1:-configs/demo.yaml}"
SELFREID=.venv/bin/selfreid

rm -rf "$SELFREID_DATA_DIR"
$SELFREID doctor --config "$CONFIG" || true   # a missing optional capability (GStreamer) is not fatal
$SELFREID run --config "$CONFIG" --until-idle --train-once
$SELFREID models list --config "$CONFIG"
$SELFREID report --config "$CONFIG" --out "$SELFREID_DATA_DIR/report.html"
echo "Open $SELFREID_DATA_DIR/report.html to see who was seen where; stage logs are in $SELFREID_DATA_DIR/logs/."
