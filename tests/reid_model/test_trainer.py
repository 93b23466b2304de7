from __future__ import annotations

import json

import pytest
import torch

from selfreid.reid_model.checkpoint import CheckpointError, load_model, read_checkpoint
from selfreid.reid_model.data import ArrayCropDataset
from selfreid.reid_model.trainer import SCLTrainer


def _first_losses(cfg, crops, steps: int = 2) -> list[float]:
    dataset = ArrayCropDataset(*crops)
    trainer = SCLTrainer(cfg, progress=False)
    trainer._setup(dataset, None)
    trainer.init_banks(dataset)
    assert torch.allclose(trainer.banks.G.norm(dim=1), torch.ones(len(dataset)))  # every slot filled
    loader = trainer._loader(dataset, trainer._batches(dataset, 1), 1, augment=True)
    losses = []
    for (x, idx), _ in zip(loader, range(steps)):
        losses.append(trainer.step(x, idx, epoch=1)[0])
    return losses


def test_same_seed_same_losses(tiny_cfg, tiny_crops) -> None:
    a = _first_losses(tiny_cfg, tiny_crops)
    assert a == _first_losses(tiny_cfg, tiny_crops)
    assert a != _first_losses(tiny_cfg.model_copy(update={"seed": 1}), tiny_crops)


def test_fit_writes_a_weights_only_checkpoint_and_a_log(tiny_cfg, tiny_crops, tmp_path) -> None:
    labels = torch.tensor([i % 4 for i in range(12)])
    result = SCLTrainer(tiny_cfg, progress=False).fit(
        ArrayCropDataset(*tiny_crops), tmp_path, monitor_labels=labels
    )
    assert result.finished and result.epochs == 2
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["epoch"] == 2 and state["banks"]["M"].shape == (12, 64) and state["embedding_dim"] == 128
    assert torch.count_nonzero(state["banks"]["M"]) > 0
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["warmup"] for r in log] == [True, False]
    assert "neighbour_precision" in log[1] and "neighbour_precision" not in log[0]
    model, cfg = load_model(result.checkpoint)
    assert cfg == tiny_cfg and not model.training
    SCLTrainer(tiny_cfg, progress=False).fit(ArrayCropDataset(*tiny_crops), tmp_path)  # a fresh run, same folder
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 2
    with torch.no_grad():
        assert model.embed(torch.randn(2, 3, 32, 16)).shape == (2, 128)


def test_resume_repeats_the_uninterrupted_run(tiny_cfg, tiny_crops, tmp_path) -> None:
    data = ArrayCropDataset(*tiny_crops)
    full = SCLTrainer(tiny_cfg, progress=False).fit(data, tmp_path / "full")
    first = SCLTrainer(tiny_cfg.model_copy(update={"epochs": 1}), progress=False).fit(
        data, tmp_path / "split"
    )
    assert first.epochs == 1
    resumed = SCLTrainer(tiny_cfg, progress=False).fit(data, tmp_path / "split", resume=True)
    assert resumed.epochs == 2 and len(resumed.history) == 1
    a, b = read_checkpoint(full.checkpoint), read_checkpoint(resumed.checkpoint)
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    assert torch.allclose(a["banks"]["M"], b["banks"]["M"], atol=1e-6)


def test_time_budget_stops_and_saves(tiny_cfg, tiny_crops, tmp_path) -> None:
    cfg = tiny_cfg.model_copy(update={"max_minutes": 1e-9})
    result = SCLTrainer(cfg, progress=False).fit(ArrayCropDataset(*tiny_crops), tmp_path)
    assert not result.finished and result.epochs == 0
    assert read_checkpoint(result.checkpoint)["step"] == 0


@pytest.mark.parametrize(
    "update",
    [
        {"tracklet_positives": True, "camera_balanced_sampling": True, "scale_with_pool": True},
        {"reproduce_warmup_self_negative_bug": True, "bank_init": "eval"},
    ],
)
def test_switches_train(tiny_cfg, tiny_crops, tmp_path, update) -> None:
    cfg = tiny_cfg.model_copy(update={"scl": tiny_cfg.scl.model_copy(update=update), "epochs": 2})
    images, cams = tiny_crops
    data = ArrayCropDataset(images, cams, groups=[f"t{i // 3}" for i in range(12)])
    result = SCLTrainer(cfg, progress=False).fit(data, tmp_path)
    assert result.finished and all(r["loss"] == r["loss"] for r in result.history)  # no NaN


def test_bad_checkpoint_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(tmp_path / "x.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="not a selfreid checkpoint"):
        load_model(tmp_path / "y.pt")
