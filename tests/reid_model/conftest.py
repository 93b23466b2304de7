"""Tiny models and crops for the reid_model tests (random init, 64x32 input: fast on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfreid.reid_model.config import ModelConfig, SCLConfig, TrainConfig

TINY_MODEL = ModelConfig(backbone="resnet18", pretrained="none", input_size=(64, 32))
TRAIN_MODEL = TINY_MODEL.model_copy(update={"input_size": (32, 16), "global_dim": 64, "local_dim": 8})
"""Narrow heads and 32x16 crops: the trainer tests exercise the loop, not the features."""


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors run fastest on one thread on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny_cfg() -> TrainConfig:
    """Seed config on a narrow random resnet18 at 32x16: 2 epochs, 1 warm-up, small P/K."""
    return TrainConfig(
        model=TRAIN_MODEL,
        scl=SCLConfig(positives=2, negatives=5, warmup_epochs=1),
        epochs=2,
        batch_size=4,
        num_workers=0,
        device="cpu",
    )


@pytest.fixture()
def tiny_crops() -> tuple[list[np.ndarray], list[int]]:
    """12 random BGR crops (two grayscale) over 3 cameras."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 20, 3), dtype=np.uint8) for _ in range(10)]
    images += [rng.integers(0, 255, (40, 20), dtype=np.uint8) for _ in range(2)]
    return images, [i % 3 for i in range(12)]
