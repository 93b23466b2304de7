"""ByteTrack and BoT-SORT from Ultralytics behind the :class:`~selfreid.plugins.contracts.Tracker` contract.

The algorithms are Ultralytics' own (``ultralytics.trackers.byte_tracker.BYTETracker`` and
``ultralytics.trackers.bot_sort.BOTSORT``); this module only feeds them our detections through the
small results-like view they read (``xyxy``, ``xywh``, ``conf``, ``cls``, boolean indexing).
One tracker instance per camera, built as ``cls(settings, frame_rate=...)``.

Output: the tracks confirmed *and matched in this frame*, as the detector's own boxes (what the
camera saw, in full-frame pixels, not the Kalman estimate) carrying an integer ``track_id``
that is unique within the tracker instance (1, 2, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.contracts import Detection, Frame

__all__ = ["ByteTrackTracker", "BotSortTracker", "DetectionsView"]


class DetectionsView:
    """The part of Ultralytics' ``Boxes`` the trackers use, over plain numpy arrays."""

    def __init__(self, xyxy: np.ndarray, conf: np.ndarray) -> None:
        self.xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
        self.conf = np.asarray(conf, dtype=np.float32).reshape(-1)
        self.cls = np.zeros(len(self.conf), dtype=np.float32)  # one class: person

    @classmethod
    def of(cls, detections: Sequence[Detection]) -> DetectionsView:
        return cls(
            np.array([d.box for d in detections], dtype=np.float32),
            np.array([d.confidence for d in detections]),
        )

    @property
    def xywh(self) -> np.ndarray:
        wh = self.xyxy[:, 2:] - self.xyxy[:, :2]
        return np.concatenate([self.xyxy[:, :2] + wh / 2, wh], axis=1)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: Any) -> DetectionsView:
        return DetectionsView(self.xyxy[index], self.conf[index])


class ByteTrackSettings(BaseModel):
    """The keys of Ultralytics' ``bytetrack.yaml``, with what each one does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    track_high_thresh: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Detections at or above this score take part in the first association; "
        "raise for cleaner tracks, lower to keep more people.",
    )
    track_low_thresh: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Scores between this and track_high_thresh are only used to extend existing "
        "tracks (ByteTrack's second association), which rescues occluded people.",
    )
    new_track_thresh: float = Field(
        0.25,
        ge=0,
        le=1,
        description="An unmatched detection starts a new track only at or above this score; "
        "higher = fewer false tracks.",
    )
    track_buffer: int = Field(
        30,
        ge=1,
        description="Frames (at 30 fps) a lost track is kept for re-identification by motion; scaled by "
        "frame_rate/30. Higher survives longer occlusions but risks ID switches.",
    )
    match_thresh: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Maximum association cost (1 - IoU, score-fused) accepted for a match; "
        "higher matches more loosely.",
    )
    fuse_score: bool = Field(
        True, description="Multiply IoU by the detection score when matching; steadies weak detections."
    )


class BotSortSettings(ByteTrackSettings):
    """``botsort.yaml`` keys without the ReID ones (appearance is the embedder's job downstream)."""

    gmc_method: Literal["none", "sparseOptFlow", "orb", "sift", "ecc"] = Field(
        "none",
        description="Global motion compensation: 'none' for fixed cameras; 'sparseOptFlow' (cheapest) "
        "or orb/sift/ecc when the camera pans or shakes.",
    )


class _UltralyticsTracker:
    """Common adapter; subclasses name the Ultralytics class."""

    Settings: type[ByteTrackSettings] = ByteTrackSettings

    def __init__(self, settings: ByteTrackSettings, frame_rate: float = 30.0) -> None:
        self.settings = settings
        self.frame_rate = frame_rate
        args = settings.model_dump()
        args["track_buffer"] = max(1, int(round(settings.track_buffer * frame_rate / 30.0)))
        self._tracker = self._build(SimpleNamespace(**args))

    def _build(self, args: SimpleNamespace) -> Any:
        raise NotImplementedError

    def update(self, frame: Frame, detections: Sequence[Detection]) -> list[Detection]:
        rows = self._tracker.update(DetectionsView.of(detections), frame.image)
        out = []
        for row in rows:  # [x1, y1, x2, y2, track_id, score, cls, idx]
            det = detections[int(row[7])]
            out.append(Detection(box=det.box, confidence=det.confidence, track_id=int(row[4])))
        return out


class ByteTrackTracker(_UltralyticsTracker):
    """ByteTrack: IoU association of high-score, then low-score detections (Kalman motion model)."""

    Settings = ByteTrackSettings

    def _build(self, args: SimpleNamespace) -> Any:
        from ultralytics.trackers.byte_tracker import BYTETracker

        return BYTETracker(args)


class BotSortTracker(_UltralyticsTracker):
    """BoT-SORT: ByteTrack with a better Kalman state (x, y, w, h) and optional camera-motion compensation."""

    Settings = BotSortSettings

    def _build(self, args: SimpleNamespace) -> Any:
        from ultralytics.trackers.bot_sort import BOTSORT

        args.with_reid, args.proximity_thresh, args.appearance_thresh = (
            False,
            0.5,
            0.8,
        )  # read by BOTSORT, unused without ReID
        return BOTSORT(args)
