"""Model registry: versions on disk mirrored into a real Redis, atomic promotion, crash repair."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from selfreid.pipeline.training.registry import (
    ModelRegistry,
    RegistryError,
    index_key,
    production_key,
    promoted_channel,
)
from selfreid.reid_model.calibration import CALIBRATION_METADATA_KEY, AssociationCalibration

PREFIX = "site"


def _files(tmp_path: Path, tag: str) -> dict[str, Path]:
    onnx, ckpt = tmp_path / f"{tag}.onnx", tmp_path / f"{tag}.pt"
    onnx.write_bytes(f"onnx-{tag}".encode() * 100)
    ckpt.write_bytes(f"ckpt-{tag}".encode() * 100)
    return {"model.onnx": onnx, "checkpoint.pt": ckpt}


def _messages(pubsub, n: int, timeout_s: float = 5.0) -> list[dict]:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg:
            out.append(json.loads(msg["data"]))
    return out


@pytest.fixture()
def registry(tmp_path, redis_client) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models", redis_client, PREFIX)


def _register(registry: ModelRegistry, tmp_path: Path, tag: str, **kw):
    return registry.register(_files(tmp_path, tag), embedding_dim=64, config={"tag": tag}, **kw)


def test_register_promote_publishes_and_mirrors(registry, tmp_path, redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(promoted_channel(PREFIX))
    v1 = _register(registry, tmp_path, "a", metrics={"score": 0.5})
    assert v1.version == "1" and v1.folder.name == "v0001" and v1.status == "candidate"
    assert {"model.onnx", "checkpoint.pt", "config.json", "metrics.json", "manifest.json"} <= {
        p.name for p in v1.folder.iterdir()}
    assert registry.production() is None and redis_client.get(production_key(PREFIX)) is None
    registry.promote("1")
    v2 = _register(registry, tmp_path, "b", parent="1")
    registry.promote("v2")
    pointer = json.loads(redis_client.get(production_key(PREFIX)))
    assert pointer == {"version": "2", "onnx": str(v2.onnx.resolve()), "embedding_dim": 64}
    assert [m["version"] for m in _messages(pubsub, 2)] == ["1", "2"]
    index = {k.decode(): json.loads(v) for k, v in redis_client.hgetall(index_key(PREFIX)).items()}
    assert index["1"]["status"] == "retired" and index["2"]["status"] == "production"
    assert index["2"]["parent"] == "1" and index["1"]["metrics"] == {"score": 0.5}
    pubsub.close()  # an open subscriber keeps the embedded server from shutting down at teardown
    assert json.loads((v2.folder / "config.json").read_text()) == {"tag": "b"}
    assert not list(registry.root.glob(".*")), "temp files left in the registry folder"


def test_crash_between_export_and_promotion_is_repaired(registry, tmp_path, redis_client):
    _register(registry, tmp_path, "a")
    registry.promote("1")
    _register(registry, tmp_path, "b", parent="1")  # exported and registered, then the process dies
    # ... while a third export was half-way: a staging folder and a folder without its manifest.
    (registry.root / ".staging-v0003-dead").mkdir()
    (registry.root / ".staging-v0003-dead" / "model.onnx").write_bytes(b"half")
    broken = registry.root / "v0003"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"half")
    redis_client.flushall()  # and the Redis mirror was lost too

    reopened = ModelRegistry(registry.root, redis_client, PREFIX)
    actions = reopened.repair()
    assert any("staging" in a for a in actions) and any("v0003" in a for a in actions)
    assert not list(reopened.root.glob(".staging-*"))
    assert reopened.production().version == "1"
    assert json.loads(redis_client.get(production_key(PREFIX)))["version"] == "1"
    assert {v.version: v.status for v in reopened.versions()} == {"1": "production", "2": "candidate"}
    assert set(redis_client.hkeys(index_key(PREFIX))) == {b"1", b"2"}
    assert reopened.next_version() == "4", "a number seen on disk is never reused"
    reopened.promote("2")
    assert json.loads(redis_client.get(production_key(PREFIX)))["version"] == "2"


def test_crash_after_the_disk_pointer_resyncs_redis(registry, tmp_path, redis_client, monkeypatch):
    _register(registry, tmp_path, "a")
    registry.promote("1")
    _register(registry, tmp_path, "b")

    def die(*args, **kwargs):
        raise ConnectionError("killed")

    monkeypatch.setattr(registry, "_mirror_production", die)
    with pytest.raises(ConnectionError):
        registry.promote("2")
    assert json.loads(redis_client.get(production_key(PREFIX)))["version"] == "1", "Redis still stale"
    monkeypatch.undo()
    ModelRegistry(registry.root, redis_client, PREFIX).repair()
    assert json.loads(redis_client.get(production_key(PREFIX)))["version"] == "2", "disk pointer wins"


def test_missing_production_folder_falls_back_and_rollback(registry, tmp_path, redis_client):
    for tag in "abc":
        _register(registry, tmp_path, tag)
    for version in ("1", "2", "3"):
        registry.promote(version)
    assert registry.rollback().version == "2"
    assert {v.version: v.status for v in registry.versions()} == {"1": "retired", "2": "production", "3": "candidate"}
    registry.promote("3")
    (registry.root / "v0003" / "manifest.json").unlink()  # production folder damaged
    actions = ModelRegistry(registry.root, redis_client, PREFIX).repair()
    assert any("falling back to 2" in a for a in actions)
    assert registry.production().version == "2"
    assert json.loads(redis_client.get(production_key(PREFIX)))["version"] == "2"
    registry.rollback()
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()


def test_before_switch_runs_before_the_pointer_moves_and_only_on_a_change(tmp_path, redis_client):
    seen: list[tuple[str, str | None]] = []  # (version about to serve, version serving meanwhile)

    def record(target) -> None:
        serving = registry.production()
        seen.append((target.version, serving.version if serving else None))

    registry = ModelRegistry(tmp_path / "models", redis_client, PREFIX, before_switch=record)
    for tag in ("a", "b"):
        _register(registry, tmp_path, tag)
    registry.promote("1")
    registry.promote("2")
    registry.promote("2")  # serves already: no switch, no hook
    registry.rollback()
    assert seen == [("1", None), ("2", "1"), ("1", "2")]


def test_promote_refuses_rejected_corrupted_and_unknown(registry, tmp_path):
    _register(registry, tmp_path, "a", gate={"passed": False, "reason": "non-finite weights"})
    assert registry.get("1").status == "rejected"
    with pytest.raises(RegistryError, match="non-finite weights"):
        registry.promote("1")
    registry.promote("1", force=True)
    v2 = _register(registry, tmp_path, "b")
    (v2.folder / "model.onnx").write_bytes(b"x" * (v2.onnx.stat().st_size))  # same size, other bytes
    with pytest.raises(RegistryError, match="checksum"):
        registry.promote("2")
    with pytest.raises(RegistryError, match="not in the registry"):
        registry.promote("9")
    with pytest.raises(RegistryError, match="not a model version"):
        registry.promote("latest")
    assert registry.production().version == "1"


def test_models_cli_init_list_promote_rollback(tmp_path, redis_server, redis_client, shared_data, monkeypatch):
    """`selfreid models init` serves the pretrained backbone as version 1; mistakes are one line."""
    import yaml
    from typer.testing import CliRunner

    from selfreid.pipeline.cli import app

    crops = tmp_path / "crops"
    crops.mkdir()
    for path in sorted((shared_data / "con-reid" / "bounding_box_train").glob("*.jpg"))[:300:50]:
        (crops / path.name).symlink_to(path)
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "site"), "pool": {"prefix": PREFIX},
        "train": {"model": {"backbone": "mobilenet_v2", "input_size": [128, 64]}},
    }))
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    runner = CliRunner()

    result = runner.invoke(app, ["models", "init", "-c", str(config), "--crops", str(crops)])
    assert result.exit_code == 0, result.output
    pointer = json.loads(redis_client.get(production_key(PREFIX)))
    assert pointer["version"] == "1" and pointer["embedding_dim"] == 4096 and Path(pointer["onnx"]).is_file()
    again = runner.invoke(app, ["models", "init", "-c", str(config), "--crops", str(crops)])
    assert again.exit_code == 2 and "already has versions" in again.output
    idempotent = runner.invoke(app, ["models", "init", "--if-empty", "-c", str(config), "--crops", str(crops)])
    assert idempotent.exit_code == 0 and json.loads(redis_client.get(production_key(PREFIX)))["version"] == "1"

    # version 1 is reproducible: another site gets the same heads (seeded by train.seed), so "before"
    # numbers compare across runs
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "data_dir": str(tmp_path / "other"),
                                     "pool": {"prefix": PREFIX + "-other"}}))
    assert runner.invoke(app, ["models", "init", "-c", str(other), "--crops", str(crops)]).exit_code == 0
    first, second = (torch.load(tmp_path / site / "models" / "v0001" / "checkpoint.pt", weights_only=True)["model"]
                     for site in ("site", "other"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    listed = runner.invoke(app, ["models", "list", "-c", str(config)])
    assert listed.exit_code == 0 and "production" in listed.output, listed.output
    assert listed.output.count("Model version 1 serves; no earlier tracklet to carry over") == 1, listed.output
    for args, message in ((["rollback"], "nothing to roll back"), (["promote", "7"], "not in the registry")):
        bad = runner.invoke(app, ["models", *args, "-c", str(config)])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output


def _tiny_onnx(path: Path) -> Path:
    """A valid one-node ONNX graph (Identity) with a serving-style metadata entry."""
    from onnx import TensorProto, helper

    io_ = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", io_[:1], io_[1:]))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "model_version", "2"
    path.write_bytes(proto.SerializeToString())
    return path


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


CALIBRATION = AssociationCalibration(threshold=0.61, method="eer", positive_mean=0.8, positive_std=0.05,
                                     negative_mean=0.4, negative_std=0.1, n_positive=12, n_negative=30,
                                     separation=5.06, auc=0.99)


def test_calibration_is_stored_in_the_record_and_the_onnx_metadata(registry, tmp_path, redis_client):
    files = {"model.onnx": _tiny_onnx(tmp_path / "m.onnx"), "model_int8.onnx": _tiny_onnx(tmp_path / "q.onnx"),
             "checkpoint.pt": _files(tmp_path, "a")["checkpoint.pt"]}
    version = registry.register(files, embedding_dim=4, calibration=CALIBRATION.to_dict())
    assert version.manifest["calibration"] == CALIBRATION.to_dict()
    for name in ("model.onnx", "model_int8.onnx"):
        meta = _onnx_metadata(version.folder / name)
        assert AssociationCalibration.from_json(meta[CALIBRATION_METADATA_KEY]) == CALIBRATION
        assert meta["model_version"] == "2", "the serving metadata is kept"
    registry.verify(version)  # stamped before hashing: the manifest checksums hold
    assert _onnx_metadata(tmp_path / "m.onnx").keys() == {"model_version"}, "the source file is not touched"
    index = json.loads(redis_client.hget(index_key(PREFIX), "1"))
    assert index["calibration"] == CALIBRATION.to_dict()
    assert registry.get("1").calibration == CALIBRATION


def test_a_version_without_calibration_is_calibrated_once(registry, tmp_path, redis_client):
    version = _register(registry, tmp_path, "a")
    assert version.calibration is None and version.record()["calibration"] is None
    registry.promote("1")
    calibrated = registry.calibrate("1", CALIBRATION)
    assert calibrated.calibration == CALIBRATION and registry.production().calibration == CALIBRATION
    assert json.loads(redis_client.hget(index_key(PREFIX), "1"))["calibration"] == CALIBRATION.to_dict()
    registry.verify(registry.get("1"))  # the frozen files and their manifest are unchanged
    with pytest.raises(RegistryError, match="calibrated already"):
        registry.calibrate("1", CALIBRATION)
    registry.repair()  # a re-sync from disk keeps it
    assert json.loads(redis_client.hget(index_key(PREFIX), "1"))["calibration"]["threshold"] == 0.61
