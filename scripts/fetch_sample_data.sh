#!/usr/bin/env bash
# Provision the demo's video on a machine without the sample data (../shared/data or
# $SELFREID_SHARED_DATA), from a package registry only: Debian's `opencv-doc` package carries
# PETS09-S2L1's vtest.avi (OpenCV's sample data). It goes to .selfreid/sample-data/pets09-s2l1/,
# a folder the tools look in (plugins/assets.py: shared_data_dir). With only this video the demo runs
# two virtual cameras with the offline yolo detector, and its before/after table says which labelled
# measurements it could not make (they need the full sample data).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=.selfreid/sample-data/pets09-s2l1
if [ -f "$TARGET/vtest.avi" ]; then
  echo "sample video present: $TARGET/vtest.avi"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download opencv-doc >/dev/null); then
  echo "cannot download Debian's opencv-doc package (apt-get download opencv-doc); run 'apt-get update' as root," >&2
  echo "or put the sample data at ../shared/data (or set SELFREID_SHARED_DATA)" >&2
  exit 1
fi
dpkg-deb --fsys-tarfile "$tmp"/opencv-doc_*.deb | tar -x -C "$tmp" ./usr/share/doc/opencv-doc/examples/data/vtest.avi
mkdir -p "$TARGET"
mv "$tmp/usr/share/doc/opencv-doc/examples/data/vtest.avi" "$TARGET/vtest.avi"
echo "sample video provisioned from opencv-doc: $TARGET/vtest.avi"
