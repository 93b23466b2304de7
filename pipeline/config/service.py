"""Self-training service, export and the model registry."""

from __future__ import annotations

from pydantic import Field

from selfreid.pipeline.config.base import Section

__all__ = ["TrainServiceConfig", "ExportConfig", "RegistryConfig"]


class TrainServiceConfig(Section):
    interval_minutes: float | None = Field(60.0, gt=0, description="Wake on this schedule; None = off.")
    min_new_crops: int | None = Field(2000, ge=1, description="Wake when the pool grew by this many crops.")
    drift_threshold: float | None = Field(0.15, gt=0, description="Wake when a camera's mean embedding moves this far.")
    snapshot_crops: int = Field(4000, ge=16, description="Crops per cycle (camera-balanced).")
    snapshot_hours: float | None = Field(24.0, gt=0)
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="Slice of the snapshot kept for the label-free gate.")
    validation_dir: str | None = Field(None, description="Labelled Market-layout set for the gate (optional).")
    epochs: int = Field(5, ge=1)
    max_minutes: float | None = Field(30.0, gt=0)


class ExportConfig(Section):
    opset: int = Field(17, ge=13)
    parity_min_cosine: float = Field(0.9999, gt=0, le=1)
    fp16: bool = False
    int8: bool = False


class RegistryConfig(Section):
    directory: str = Field("models", description="Versioned model folders, relative to data_dir.")
