"""Detection stage: cameras, detector, tracker and the crop policy."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import Field, field_validator, model_validator

from selfreid.pipeline.config.base import PluginChoice, Section

__all__ = ["CameraConfig", "CropPolicyConfig", "IngestConfig", "LIVE_SOURCES"]

LIVE_SOURCES = ("rtsp", "webcam")  # built-in source plugins that only ever see live video


class CameraConfig(Section):
    """One camera. ``source`` picks the source plugin (file, rtsp, webcam, images, gstreamer)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Stable id used in the pool and the matcher.")
    name: str = Field("", description="Human-readable label (status tables only).")
    source: str = Field("file", description="Source plugin name.")
    uri: str = Field(description="File path, rtsp:// URL, webcam index, image folder or GStreamer pipeline.")
    stride: int = Field(1, ge=1, description="Process every n-th frame.")
    target_fps: float | None = Field(
        None, gt=0, description="Cap on processed frames per second (live sources)."
    )
    roi: tuple[int, int, int, int] | None = Field(
        None, description="Region of interest (x1, y1, x2, y2) in pixels."
    )
    realtime: bool = Field(
        False, description="File sources: play at native speed instead of as fast as possible."
    )
    start_time: datetime | None = Field(
        None,
        description="Recorded media (file, images, gstreamer live: false): when the recording began, ISO 8601 "
        "('2026-12-01T09:30:00+01:00'; no zone = UTC). Frames are then stamped start_time + their position, so the "
        "timeline, search and events show when a person was there; unset = position + the time ingest started. "
        "The privacy retention counts from these times. Live cameras always use the capture time.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Extra source-plugin settings.")

    @field_validator("start_time")
    @classmethod
    def _utc_unless_zoned(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value

    @model_validator(mode="after")
    def _start_time_is_for_recordings(self) -> CameraConfig:
        if self.start_time is not None and self.source in LIVE_SOURCES:
            raise ValueError(f"start_time is for recordings; a {self.source} camera is stamped with the capture time")
        return self

    @model_validator(mode="after")
    def _roi_is_a_box(self) -> CameraConfig:
        if self.roi is not None and not (0 <= self.roi[0] < self.roi[2] and 0 <= self.roi[1] < self.roi[3]):
            raise ValueError(f"roi must be (x1, y1, x2, y2) with 0 <= x1 < x2 and 0 <= y1 < y2, got {self.roi}")
        return self


class CropPolicyConfig(Section):
    """Which detections become pool crops."""

    min_height: int = Field(64, ge=1, description="Pixels; smaller people carry too little identity.")
    min_width: int = Field(24, ge=1, description="Pixels.")
    min_aspect: float = Field(1.2, gt=0, description="height / width lower bound (people stand).")
    max_aspect: float = Field(
        5.0, gt=0, description="height / width upper bound (rejects slivers at frame edges)."
    )
    min_confidence: float = Field(
        0.4, ge=0, le=1, description="Detector confidence a crop needs (tracking uses weaker boxes)."
    )
    min_sharpness: float = Field(15.0, ge=0, description="Variance of the Laplacian; lower = blurred.")
    max_overlap: float = Field(
        0.5, ge=0, le=1, description="Skip crops covered more than this by another box."
    )
    every_k_frames: int = Field(5, ge=1, description="At most one crop per track every k processed frames.")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of stored crops (size vs detail).")


class IngestConfig(Section):
    """The ingest service: every camera of the site in one process, one batched detector."""

    cameras: list[CameraConfig] = Field(
        default_factory=list, description="Every camera of the site (ids unique)."
    )
    detector: PluginChoice = Field(
        PluginChoice(plugin="yolo"), description="Detector plugin (one, batched over cameras)."
    )
    tracker: PluginChoice = Field(
        PluginChoice(plugin="bytetrack"), description="Tracker plugin (one instance per camera)."
    )
    crops: CropPolicyConfig = Field(CropPolicyConfig(), description="Which tracked people become pool crops.")
    device: str = Field(
        "auto", description="Detector device: 'auto' (CUDA when present), 'cpu', 'cuda:0', ..."
    )
    frame_queue: int = Field(
        2,
        ge=1,
        description="Decoded frames buffered per camera; live cameras drop the oldest beyond it (counted).",
    )
    status_interval_s: float = Field(
        2.0, gt=0, description="Seconds between status reports and metric updates."
    )
    flush_timeout_s: float = Field(
        10.0,
        ge=0,
        description="On stop, keep trying this long to write queued crops to Redis before giving up.",
    )
    metrics_port: int | None = Field(
        9101, ge=0, le=65535, description="Prometheus metrics port; None = off, 0 = any."
    )

    @model_validator(mode="after")
    def _camera_ids_unique(self) -> IngestConfig:
        ids = [cam.id for cam in self.cameras]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"camera ids must be unique (they key the pool), repeated: {', '.join(dupes)}")
        return self
