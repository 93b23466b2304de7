"""ONNX export: metadata, dynamic batch, parity on real crops, FP16/INT8 variants."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
import torch

from selfreid.reid_model.config import ModelConfig
from selfreid.reid_model.export import (
    ParityError,
    check_parity,
    embed_onnx,
    export_bundle,
    export_onnx,
    onnx_session,
    read_metadata,
)
from selfreid.reid_model.model import build_model
from selfreid.reid_model.transforms import preprocess_bgr

SIZE = (128, 64)


@pytest.fixture(scope="module")
def crops(shared_data) -> list[np.ndarray]:
    files = sorted((shared_data / "con-reid" / "bounding_box_train").glob("*.jpg"))[::400][:12]
    return [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]  # some are single-channel


@pytest.fixture(scope="module")
def model():
    """ImageNet MobileNetV2 (offline weights): realistic activation ranges matter for FP16."""
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="mobilenet_v2", input_size=SIZE)).eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx", None, "7", opset=17)


def test_metadata_props_describe_the_input(exported, model):
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert meta["input_size"] == "128x64"
    assert meta["channel_order"] == "RGB"
    assert json.loads(meta["mean"]) == pytest.approx([123.675, 116.28, 103.53])
    assert json.loads(meta["std"]) == pytest.approx([58.395, 57.12, 57.375])
    assert int(meta["embedding_dim"]) == model.embedding_dim == 2048 + 8 * 256
    assert meta["model_version"] == "7"
    assert read_metadata(exported) == meta
    assert not [p for p in exported.parent.iterdir() if p.name != "model.onnx"], "temp files left behind"


def test_dynamic_batch_matches_torch(exported, model, crops):
    session = onnx_session(exported)
    x = preprocess_bgr(crops[:5], SIZE)
    assert session.get_inputs()[0].name == "images" and session.get_outputs()[0].name == "embeddings"
    one = session.run(["embeddings"], {"images": x[:1].numpy()})[0]
    five = session.run(["embeddings"], {"images": x.numpy()})[0]
    assert one.shape == (1, model.embedding_dim) and five.shape == (5, model.embedding_dim)
    with torch.no_grad():
        ref = model.embed(x).numpy()
    np.testing.assert_allclose(five, ref, atol=1e-4)
    np.testing.assert_allclose(one[0], five[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(five, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embed_onnx(exported, crops[:5]), five, atol=1e-5)


def test_parity_is_high_for_the_same_model_and_low_for_another(exported, model, crops):
    assert check_parity(model, exported, crops) >= 0.9999
    torch.manual_seed(1)
    other = build_model(ModelConfig(backbone="mobilenet_v2", pretrained="none", input_size=SIZE)).eval()
    assert check_parity(other, exported, crops) < 0.99


def test_bundle_rejects_an_export_below_the_parity_threshold(model, crops, tmp_path, monkeypatch):
    import selfreid.reid_model.export as export

    monkeypatch.setattr(export, "check_parity", lambda *a, **k: 0.98)
    with pytest.raises(ParityError, match="0.98"):
        export.export_bundle(model, tmp_path, "2", crops, min_cosine=0.9999)


def test_fp16_and_int8_variants_have_their_own_parity(model, crops, tmp_path):
    bundle = export_bundle(model, tmp_path, "3", crops, fp16=True, int8=True, variant_min_cosine=0.99)
    assert set(bundle.files) == {"model.onnx", "model_fp16.onnx", "model_int8.onnx"}, bundle.rejected_variants
    assert bundle.parity["model.onnx"] >= 0.9999
    for name in ("model_fp16.onnx", "model_int8.onnx"):
        assert 0.99 <= bundle.parity[name] < 1.0 + 1e-6
        assert read_metadata(bundle.files[name])["model_version"] == "3"
        assert embed_onnx(bundle.files[name], crops[:5]).shape == (5, model.embedding_dim)
    sizes = {n: p.stat().st_size for n, p in bundle.files.items()}
    assert sizes["model_fp16.onnx"] < 0.6 * sizes["model.onnx"]
    assert sizes["model_int8.onnx"] < sizes["model.onnx"]
