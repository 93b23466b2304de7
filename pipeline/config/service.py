"""Self-training service, its validation gate, ONNX export and the model registry."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selfreid.pipeline.config.base import Section

__all__ = ["GateConfig", "TrainServiceConfig", "ExportConfig", "BackfillConfig", "RegistryConfig"]


class GateConfig(Section):
    """When a freshly trained candidate may replace the production model (pipeline/training/gate.py).

    Scores are compared against the production model on the same held-out crops, so a
    site's own data decides; tolerances absorb the noise of a small hold-out slice.
    """

    score: Literal["separation", "half_retrieval", "cannot_link", "track_nn"] = Field(
        "separation",
        description="Label-free score compared: separation = d' of same-tracklet halves vs cannot-link tracklets; "
        "half_retrieval = a tracklet's first half finds its second half before co-occurring tracklets; "
        "cannot_link = share of positives a cannot-link pair scores below; track_nn = nearest crop from the same "
        "tracklet (benchmark G1 ranks them). A score the slice cannot judge falls back to the next.",
    )
    min_tracklets: int = Field(
        8, ge=1,
        description="Evidence minimum: with fewer usable held-out tracklets (two or more crops) the gate says "
        "'not enough evidence' and the serving model stays.",
    )
    min_gap_s: float = Field(
        1.0, ge=0, description="Seconds dropped between the two halves of a held-out tracklet (positives)."
    )

    validation_dir: str | None = Field(
        None, description="Labelled Market-layout set (query/ + bounding_box_test/); mAP and R1 must not drop."
    )
    max_labelled_drop: float = Field(
        0.0, ge=0, description="Allowed drop of mAP and R1 (0-1 scale) on the labelled set; 0 = must not drop."
    )
    max_proxy_drop: float = Field(
        0.02, ge=0, description="Allowed drop of the label-free score (in the score's own unit)."
    )
    proxy_z: float = Field(
        1.64, ge=0,
        description="A drop must also be significant: paired change + z * standard error < 0 (1.64 ~ 95 % "
        "one-sided); 0 = any drop beyond max_proxy_drop rejects.",
    )
    max_mean_cosine: float = Field(
        0.9, gt=0, le=1, description="Collapse check: mean pairwise cosine above this = collapsed embeddings."
    )
    min_effective_rank: float = Field(
        2.0, ge=1, description="Collapse check: exp(entropy of the singular values) below this = collapsed."
    )
    neighbours: int = Field(5, ge=1, description="k for the cross-camera neighbour rate.")


class TrainServiceConfig(Section):
    interval_minutes: float | None = Field(60.0, gt=0, description="Wake on this schedule; None = off.")
    min_new_crops: int | None = Field(2000, ge=1, description="Wake when the pool grew by this many crops.")
    drift_threshold: float | None = Field(
        0.15, gt=0, description="Wake when a camera's mean embedding moves this far (1 - cosine of the means); None = off."
    )
    drift_sample_crops: int = Field(256, ge=8, description="Recent pool crops embedded per drift check.")
    drift_every_minutes: float = Field(
        10.0, gt=0, description="Drift checks embed crops with the production model: at most one per this period."
    )
    check_seconds: float = Field(30.0, gt=0, description="How often the service looks at its triggers.")
    snapshot_crops: int = Field(4000, ge=16, description="Crops per cycle (camera-balanced).")
    snapshot_hours: float | None = Field(24.0, gt=0, description="Only crops from the last N hours; None = all.")
    holdout_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of the snapshot's tracklets kept out of training for the gate."
    )
    min_crops: int = Field(32, ge=8, description="Skip a cycle when the snapshot has fewer training crops.")
    epochs: int = Field(5, ge=1, description="Training epochs per cycle (warm-started from production).")
    max_minutes: float | None = Field(30.0, gt=0, description="Wall-time budget of one cycle's training.")
    state_dir: str = Field("train_service", description="Cycle state, snapshots and checkpoints (under data_dir).")
    gate: GateConfig = GateConfig()


class ExportConfig(Section):
    opset: int = Field(17, ge=13, description="ONNX opset of the exported embedder.")
    exporter: Literal["torchscript", "dynamo"] = Field(
        "torchscript", description="torch.onnx exporter; torchscript is ~10x faster and keeps the opset exactly."
    )
    slim: bool = Field(True, description="Simplify the graph with onnxslim (constant folding, fusions).")
    parity_min_cosine: float = Field(0.9999, gt=0, le=1, description="Torch vs ONNX Runtime, worst crop.")
    parity_crops: int = Field(32, ge=1, description="Real crops used for the parity check.")
    fp16: bool = Field(False, description="Also write model_fp16.onnx (float32 inputs/outputs; GPU serving).")
    int8: bool = Field(False, description="Also write model_int8.onnx (dynamic quantisation; CPU serving).")
    variant_min_cosine: float = Field(
        0.99, gt=0, le=1, description="FP16/INT8 variants below this parity are not kept."
    )


class BackfillConfig(Section):
    """How much of the retained pool a promotion re-embeds before the switch (docs/backfill.md)."""

    enabled: bool = Field(True, description="Rebuild a promoted version's gallery from the pool before it serves.")
    max_crops: int = Field(100_000, ge=0, description="Newest retained crops re-embedded at most (bounds the work).")
    batch_size: int = Field(64, ge=1, description="Crops per embedding batch (one transaction each).")
    max_s: float = Field(
        600.0, gt=0, description="The switch happens after this long even if the backfill is not done."
    )


class RegistryConfig(Section):
    directory: str = Field("models", description="Versioned model folders, relative to data_dir.")
    backfill: BackfillConfig = BackfillConfig()
