"""Checkpoints: one ``.pt`` file readable with ``torch.load(path, weights_only=True)``.

Layout (plain dicts, tensors, numbers and strings only; configs are JSON strings)::

    format          "selfreid-scl/1"
    train_config    TrainConfig as JSON
    input_spec      InputSpec.as_dict() (colour order, mean/std, input size)
    embedding_dim   int, width of ReIDModel.embed
    model           model state dict
    epoch           completed epochs
    optimizer       optimiser state dict         (training checkpoints only)
    banks           {"G", "L", "M"} tensors       (training checkpoints only)
    rng             {"torch", "data", "cuda"?}     (training checkpoints only)
    metrics         {name: float}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from selfreid.reid_model.config import TrainConfig
from selfreid.reid_model.model import ReIDModel, build_model
from selfreid.reid_model.transforms import input_spec

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "save_checkpoint", "read_checkpoint", "load_model"]

CHECKPOINT_FORMAT = "selfreid-scl/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a selfreid checkpoint."""


def save_checkpoint(
    path: str | Path,
    model: ReIDModel,
    cfg: TrainConfig,
    epoch: int = 0,
    metrics: dict[str, float] | None = None,
    **training_state: Any,
) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint.
    ``training_state`` may hold ``optimizer``, ``banks`` and ``rng`` entries (see the module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "train_config": cfg.model_dump_json(),
        "input_spec": input_spec(cfg.model).as_dict(),
        "embedding_dim": model.embedding_dim,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        **training_state,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict (``weights_only`` load); a bad file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(
            f"{path} is not a readable selfreid checkpoint (torch.load refused it: {type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a selfreid checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[ReIDModel, TrainConfig]:
    """The trained model (eval mode, on ``device``) and its TrainConfig. No pretrained weights are
    fetched: the architecture is rebuilt with random init and the checkpoint's tensors loaded."""
    state = read_checkpoint(path)
    cfg = TrainConfig.model_validate(json.loads(state["train_config"]))
    model = build_model(cfg.model.model_copy(update={"pretrained": "none"}))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
