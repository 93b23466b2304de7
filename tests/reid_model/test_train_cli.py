"""``selfreid train`` / ``selfreid eval`` end to end on a tiny Market-style folder."""

from __future__ import annotations

import numpy as np
import yaml
from PIL import Image
from typer.testing import CliRunner

from selfreid.pipeline.cli import app

from .conftest import TRAIN_MODEL


def _market_folder(root) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    for pid in (1, 2, 3):
        for cam in (1, 2):
            for frame in range(2):
                pixels = rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / f"{pid:04d}_c{cam}s1_{frame:06d}.jpg")


def test_train_then_eval(tmp_path) -> None:
    data = tmp_path / "market"
    _market_folder(data)
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "site"),
                "train": {
                    "model": TRAIN_MODEL.model_dump(mode="json"),
                    "scl": {"positives": 2, "negatives": 4, "warmup_epochs": 1},
                    "epochs": 1,
                    "batch_size": 4,
                    "num_workers": 0,
                    "device": "cpu",
                },
            }
        )
    )
    runner = CliRunner()
    out = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--data", str(data), "--config", str(config), "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    assert (out / "last.pt").is_file()
    evaluated = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(out / "last.pt"),
            "--data",
            str(data),
            "--holdout-ids",
            "2",
            "--camera-penalty",
            "--device",
            "cpu",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "standard (cosine): mAP" in evaluated.output and "camera penalty 0.05" in evaluated.output


def test_user_mistakes_are_one_line_errors(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--model", str(tmp_path / "none.pt"), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a folder" in result.output
