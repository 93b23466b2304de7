"""The built-in trainer plugin: Selective Contrastive Learning (``selfreid.reid_model.trainer``).

Registered as ``scl`` in the ``selfreid.trainers`` entry-point group. ``params`` is a TrainConfig
(the ``train:`` section's keys) plus ``progress``; ``train.mode: site`` selects the site mode and
``train.interpolation.enabled`` the label-free weight interpolation toward the start::

    trainer = registry.create("trainers", "scl", {"train": {"epochs": 5, "mode": "site"}})
    result = trainer.fit(images_bgr, camera_ids, groups, None, "runs/x", times=timestamps)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.contracts import TrainResult
from selfreid.reid_model.config import TrainConfig
from selfreid.reid_model.data import ArrayCropDataset
from selfreid.reid_model.interpolation import conservative_update
from selfreid.reid_model.trainer import SCLTrainer

__all__ = ["SelectiveContrastiveTrainer"]


class SelectiveContrastiveTrainer:
    """:class:`~selfreid.plugins.contracts.Trainer` adapter around :class:`SCLTrainer`."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        train: TrainConfig = Field(TrainConfig(), description="SCL hyper-parameters (seed defaults).")
        progress: bool = Field(False, description="Show a progress bar on stderr.")
        resume: bool = Field(
            False, description="Continue out_dir/last.pt when it exists (same crops needed)."
        )

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or self.Settings()

    def fit(
        self,
        images: Sequence[np.ndarray],
        camera_ids: Sequence[int],
        groups: Sequence[str] | None,
        init_checkpoint: str | None,
        out_dir: str,
        times: Sequence[float] | None = None,
    ) -> TrainResult:
        """Train on BGR crops (uint8 HxWx3 or grayscale). ``groups`` (tracklet keys unique across
        cameras, e.g. ``camera/track``) are used by ``train.scl.tracklet_positives`` and by site mode;
        ``times`` (seconds) let site mode and the interpolation tell co-occurring tracklets apart."""
        cfg = self.settings.train
        dataset = ArrayCropDataset(images, camera_ids, groups, times)
        trainer = SCLTrainer(cfg, progress=self.settings.progress)
        result = trainer.fit(dataset, out_dir, init_checkpoint=init_checkpoint, resume=self.settings.resume)
        metrics = {**result.metrics, "finished": float(result.finished), "crops": float(len(dataset))}
        checkpoint = result.checkpoint
        cameras = [str(c) for c in camera_ids]
        choice = conservative_update(checkpoint, cfg, init_checkpoint, images, groups, cameras, times)
        if choice is not None and choice.checkpoint is not None:
            checkpoint, metrics["interpolation_alpha"] = choice.checkpoint, choice.alpha
        return TrainResult(checkpoint=str(checkpoint), epochs=result.epochs, metrics=metrics)
