"""Version 1 of a site's model: the configured pretrained backbone, exported, parity-checked, served.

A new site must serve embeddings before its first adaptation cycle, and before its cameras have
written a single crop. The ONNX parity check therefore takes the first source of images that
exists: a folder the operator names, the pool, the sample data, and finally generated person-sized
images. Parity compares the exported graph with the torch model on the same inputs, so synthetic
images test the export as well as real crops do; real crops are preferred only because they also
exercise the value range a site produces.

Version 1 gets its association calibration from the pool when the pool holds tracklets to fit it on
(:func:`pool_calibrator`); on a new site it has none (the matcher's default threshold applies) until
the first training cycle's gate measures it on held-out pool tracklets.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.training.registry import ModelRegistry, ModelVersion, register_checkpoint
from selfreid.pipeline.training.service import decode_crops
from selfreid.plugins.assets import shared_data_dir
from selfreid.reid_model.calibration import AssociationCalibration, CalibrationError, fit_calibration, pool_tracklets

__all__ = ["IMAGE_SUFFIXES", "generated_person_images", "initialise_registry", "parity_images", "pool_calibrator"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def generated_person_images(count: int, seed: int = 0, size: tuple[int, int] = (256, 128)) -> list[np.ndarray]:
    """Deterministic BGR images shaped like person crops: smooth colour blobs plus noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(count):
        image = np.zeros((height, width, 3), np.float32)
        for _ in range(4):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            radius = rng.uniform(20, 80)
            blob = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius**2))
            image += blob[..., None] * rng.uniform(0, 255, 3)
        image += rng.normal(0, 12, image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def _folder_images(folder: Path, count: int) -> list[np.ndarray]:
    import cv2

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    return [im for im in (cv2.imread(str(p)) for p in paths) if im is not None]


def parity_images(cfg: AppConfig, client: redis.Redis | None, folder: Path | None, count: int) -> list[np.ndarray]:
    """Images for the export's parity check: ``folder``, else the pool, else the sample data, else generated.

    Raises ``FileNotFoundError`` when ``folder`` is given but holds no readable image: an operator who
    names a folder expects it to be used.
    """
    if folder is not None:
        images = _folder_images(folder, count) if folder.is_dir() else []
        if not images:
            raise FileNotFoundError(f"no readable person crops ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
        return images
    if client is not None:
        images = decode_crops(open_pool(cfg, client).snapshot(count))[0]
        if images:
            return images
    sample = shared_data_dir()
    sample_crops = sample / "con-reid" / "bounding_box_train" if sample else None
    if sample_crops is not None and sample_crops.is_dir():
        images = _folder_images(sample_crops, count)
        if images:
            return images
    return generated_person_images(count, seed=cfg.train.seed)


def pool_calibrator(cfg: AppConfig, client: redis.Redis | None) -> Callable[[Path], AssociationCalibration | None]:
    """``calibrate(onnx_path)``: the model's label-free association calibration fitted on a pool
    snapshot (``service.snapshot_crops`` crops: tracklet halves vs cannot-link tracklets), or None when
    there is no pool or it holds too few pairs."""

    def calibrate(onnx: Path) -> AssociationCalibration | None:
        from selfreid.reid_model.export import embed_onnx

        crops = open_pool(cfg, client).snapshot(cfg.service.snapshot_crops) if client is not None else []
        images, kept = decode_crops(crops)
        crops = [crops[i] for i in kept]
        if not crops:
            return None
        try:
            cameras, times = [c.camera_id for c in crops], [c.timestamp for c in crops]
            return fit_calibration(embed_onnx(onnx, images), pool_tracklets(cameras, [c.track_id for c in crops], times),
                                   cameras, times, min_gap=cfg.service.gate.min_gap_s)
        except CalibrationError as exc:
            log.info("no association calibration from the pool yet: %s", exc)
            return None

    return calibrate


def initialise_registry(cfg: AppConfig, registry: ModelRegistry, images: list[np.ndarray]) -> ModelVersion:
    """Register and promote version 1 (the configured pretrained model); returns the serving version.

    The heads are seeded with ``train.seed``, so version 1 is the same model on every site and run.
    Its calibration is fitted on the pool when the registry's Redis holds one (:func:`pool_calibrator`).
    """
    import torch

    from selfreid.reid_model.checkpoint import save_checkpoint
    from selfreid.reid_model.model import build_model

    torch.manual_seed(cfg.train.seed)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_checkpoint(Path(tmp) / "pretrained.pt", build_model(cfg.train.model), cfg.train)
        version = register_checkpoint(registry, checkpoint, cfg.export, images, metrics={"pretrained": True},
                                      calibrate=pool_calibrator(cfg, registry.client))
    return registry.promote(version.version)
