"""Con-ReID crops as a tracker would deliver them (helper for the gate and train-service tests).

The camera comes from the file name (``_cN``); a "track" is a run of up to ``track_len`` crops of
one person in one camera in frame order, standing in for a tracker's short tracklets. The person
id is used only to form those runs, never as a training label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import cv2
import numpy as np

from selfreid.plugins.contracts import Crop
from selfreid.reid_model.data import read_market

__all__ = ["TrackCrop", "conreid_tracks", "as_pool_crops"]


@dataclass(frozen=True)
class TrackCrop:
    path: Path
    camera_id: str
    track_id: int
    frame: int
    pid: int

    def image(self) -> np.ndarray:
        return cv2.imread(str(self.path))

    @property
    def group(self) -> str:
        return f"{self.camera_id}/{self.track_id}"


def conreid_tracks(shared_data: Path, persons: int, track_len: int = 4, per_camera: int = 2,
                   first: int = 0) -> list[TrackCrop]:
    """Tracklets of ``persons`` identities (from the ``first``-th), at most ``per_camera`` tracklets
    per person and camera."""
    items = [it for it in read_market(shared_data / "con-reid" / "bounding_box_train") if "_1." not in it.path.name]
    pids = sorted({it.pid for it in items})[first:first + persons]
    out: list[TrackCrop] = []
    keyed = sorted((it for it in items if it.pid in pids), key=lambda it: (it.pid, it.camera, it.frame))
    for (pid, cam), group in groupby(keyed, key=lambda it: (it.pid, it.camera)):
        crops = list(group)
        for chunk in range(min(per_camera, (len(crops) + track_len - 1) // track_len)):
            for it in crops[chunk * track_len:(chunk + 1) * track_len]:
                out.append(TrackCrop(it.path, f"c{cam}", pid * 100 + chunk, it.frame, pid))
    return out


def as_pool_crops(tracks: list[TrackCrop]) -> list[Crop]:
    """Pool entries (the JPEG bytes of the files) for ``PoolStore.add``."""
    now = time.time()
    return [Crop(t.camera_id, now, t.frame, (0.0, 0.0, 64.0, 128.0), t.track_id, 0.9, t.path.read_bytes())
            for t in tracks]
