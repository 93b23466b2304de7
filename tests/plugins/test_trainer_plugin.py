"""The ``scl`` trainer plugin: built through the registry, satisfies the Trainer contract, trains."""

from __future__ import annotations

import numpy as np
import torch

from selfreid.plugins import registry
from selfreid.plugins.contracts import Trainer, TrainResult
from selfreid.reid_model.checkpoint import load_model

TINY = {
    "model": {
        "backbone": "resnet18",
        "pretrained": "none",
        "input_size": [32, 16],
        "global_dim": 64,
        "local_dim": 8,
    },
    "scl": {"positives": 2, "negatives": 4, "warmup_epochs": 1},
    "epochs": 2,
    "batch_size": 4,
    "num_workers": 0,
    "device": "cpu",
}


def test_scl_plugin_trains_on_bgr_arrays(tmp_path) -> None:
    torch.set_num_threads(1)
    trainer = registry.create("trainers", "scl", {"train": TINY})
    assert isinstance(trainer, Trainer)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 24, 3), dtype=np.uint8) for _ in range(7)]
    images.append(rng.integers(0, 255, (48, 24), dtype=np.uint8))  # grayscale crop
    result = trainer.fit(images, [0, 1] * 4, [f"track{i // 2}" for i in range(8)], None, str(tmp_path))
    assert isinstance(result, TrainResult) and result.epochs == 2 and result.metrics["crops"] == 8
    model, cfg = load_model(result.checkpoint)
    assert cfg.epochs == 2 and model.embedding_dim == 128


def test_scl_plugin_rejects_unknown_params() -> None:
    import pytest

    with pytest.raises(registry.PluginError, match="unknown key"):
        registry.create("trainers", "scl", {"train": {"epochz": 3}})


def test_site_mode_with_interpolation_returns_the_interpolated_checkpoint(tmp_path) -> None:
    torch.set_num_threads(1)
    train = {**TINY, "mode": "site", "interpolation": {"enabled": True, "alphas": [0.5, 1.0]}}
    trainer = registry.create("trainers", "scl", {"train": train})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 24, 3), dtype=np.uint8) for _ in range(12)]
    # 4 tracklets of 3 crops in camera 0, two at a time (cannot-link pairs), 1 s apart inside each.
    groups = [f"0/{i // 3}" for i in range(12)]
    times = [(i // 6) * 100.0 + i % 3 for i in range(12)]
    result = trainer.fit(images, [0] * 12, groups, None, str(tmp_path), times=times)
    assert result.checkpoint.endswith("interpolated.pt")
    assert result.metrics["interpolation_alpha"] in (0.5, 1.0)
    model, cfg = load_model(result.checkpoint)
    assert cfg.mode == "site"
