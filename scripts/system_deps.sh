#!/usr/bin/env bash
# Optional system packages (Debian/Ubuntu, needs root or sudo): GStreamer 1.x with the
# introspection data PyGObject builds against, for the optional `gstreamer` camera source.
# Without them selfreid still runs; `selfreid doctor` reports the source as unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
if .venv/bin/python -c "import gi; gi.require_version('Gst', '1.0')" 2>/dev/null; then
  exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    libgirepository1.0-dev libcairo2-dev pkg-config gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good >/dev/null
fi
.venv/bin/python -m pip install -q -e ".[gstreamer]"
