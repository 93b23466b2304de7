"""Config loading: defaults reproduce the seed, errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from selfreid.pipeline.config import AppConfig, ConfigError, load_config

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_defaults_reproduce_the_seed_method() -> None:
    cfg = load_config(None)
    scl, optim = cfg.train.scl, cfg.train.optim
    assert (scl.positives, scl.negatives, scl.lambda_t, scl.alpha) == (7, 500, 0.5, 1.75)
    assert (scl.lambda_p, scl.lambda_g, scl.lambda_c, scl.temperature_scale) == (0.5, 0.5, 0.05, 10.0)
    assert (optim.lr, optim.nesterov, optim.weight_decay, cfg.train.batch_size) == (1e-3, True, 5e-4, 8)
    assert cfg.train.model.input_size == (256, 128) and cfg.train.model.backbone == "resnet50"
    assert cfg.train.model.last_stride == 1 and cfg.train.augment.erasing_p == 0 and cfg.train.augment.pad_crop == 0


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  scl:\n    positivs: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "unknown key 'train.scl.positivs'" in message
    assert "\n" not in message


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"'train\.batch_size'.*integer"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_environment_overrides_redis_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:secret@redis:6379/0")
    monkeypatch.setenv("SELFREID_DATA_DIR", str(tmp_path))
    cfg = load_config(write(tmp_path, "redis:\n  url: redis://localhost:6379/0\n"))
    assert cfg.redis.url == "redis://:secret@redis:6379/0"
    assert cfg.path("models") == tmp_path / "models"


def test_configs_are_frozen() -> None:
    cfg = AppConfig()
    with pytest.raises(ValidationError):
        cfg.train.scl.positives = 3  # type: ignore[misc]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_PASSWORD", "pw")  # the site examples name a network Redis, the password comes from env
    assert isinstance(load_config(path), AppConfig)


def test_a_cluster_site_prefix_must_be_a_hash_tag(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("redis:\n  url: redis://:pw@localhost:7000/0\n  cluster: true\n")
    with pytest.raises(ConfigError, match=r"pool.prefix: on a Redis Cluster .* write '\{selfreid\}'"):
        load_config(path)
    path.write_text("redis:\n  url: redis://:pw@localhost:7000/0\n  cluster: true\npool:\n  prefix: '{site1}'\n")
    assert load_config(path).pool.prefix == "{site1}"
