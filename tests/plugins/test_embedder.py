"""The ONNX embedder: parity with the torch model, metadata-only preprocessing, hot swap, bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from selfreid.plugins import registry
from selfreid.plugins.contracts import Embedder
from selfreid.plugins.embedders.onnx_embedder import EmbedderError, InputSpec, OnnxEmbedder


def _crops(vtest_crops, n=12):
    return [c for _, c in vtest_crops[:: max(1, len(vtest_crops) // n)][:n]]


def test_registered_and_meets_contract(onnx_model):
    emb = registry.create("embedders", "onnx", {"model": str(onnx_model)}, where="embedder")
    assert isinstance(emb, OnnxEmbedder) and isinstance(emb, Embedder)
    assert emb.model_version == "v1" and emb.dim == 4096
    assert emb.provider == "CPUExecutionProvider"  # no CUDA on this machine; 'auto' falls back


def test_session_threads_follow_the_cores_this_process_may_use_and_never_spin(onnx_model):
    for threads, expected in ((None, len(os.sched_getaffinity(0))), (1, 1)):
        emb = OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx_model), device="cpu", threads=threads))
        options = emb._current().session.get_session_options()
        assert options.intra_op_num_threads == expected
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_parity_with_torch_model(onnx_model, torch_reid_model, vtest_crops, shared_data):
    """ONNX Runtime + metadata preprocessing vs the torch model on the reid_model's own preprocessing."""
    import cv2

    from selfreid.reid_model.transforms import preprocess_bgr

    market = sorted((shared_data / "con-reid" / "bounding_box_train").glob("*.jpg"))[:4]
    images = _crops(vtest_crops) + [cv2.imread(str(p)) for p in market]
    images.append(cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY))  # grayscale crops are accepted
    out = OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx_model))).embed(images)
    with torch.no_grad():
        ref = torch_reid_model.embed(preprocess_bgr(images)).numpy()
    assert out.dtype == np.float32 and out.shape == (len(images), 4096)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert (out * ref).sum(axis=1).min() >= 0.9999


def test_spec_comes_from_metadata_only(onnx_model):
    spec = OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx_model))).input_spec
    assert (spec.height, spec.width, spec.channel_order) == (256, 128, "RGB")
    assert spec.mean == pytest.approx((123.675, 116.28, 103.53), abs=1e-3)
    with pytest.raises(EmbedderError, match="lacks std"):
        InputSpec.from_metadata({"input_size": "256x128", "channel_order": "RGB", "mean": "[0,0,0]"})
    with pytest.raises(EmbedderError, match="malformed"):
        InputSpec.from_metadata({"input_size": "big", "channel_order": "RGB", "mean": "[0,0,0]", "std": "[1,1,1]"})


def test_hot_swap_and_empty_batch(onnx_model_factory, vtest_crops):
    emb = OnnxEmbedder()
    assert not emb.loaded and emb.model_version == ""
    with pytest.raises(EmbedderError, match="no ONNX model loaded"):
        emb.embed(_crops(vtest_crops, 2))
    emb.load(onnx_model_factory("v1"))
    first, version = emb.embed_versioned(_crops(vtest_crops, 2))
    emb.load(onnx_model_factory("v2"))
    second, version2 = emb.embed_versioned(_crops(vtest_crops, 2))
    assert (version, version2) == ("v1", "v2")
    np.testing.assert_allclose(first, second, atol=1e-5)  # same weights, new tag
    assert emb.embed([]).shape == (0, 4096)


def test_bad_model_files(tmp_path):
    emb = OnnxEmbedder()
    with pytest.raises(EmbedderError, match="not found"):
        emb.load(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(EmbedderError, match="not a loadable ONNX model"):
        emb.load(junk)
    bare = tmp_path / "bare.onnx"  # a valid graph without the serving metadata
    torch.onnx.export(torch.nn.Flatten(), (torch.zeros(1, 3, 4, 4),), str(bare), dynamo=False)
    with pytest.raises(EmbedderError, match="metadata lacks"):
        emb.load(bare)
    assert not emb.loaded


def test_cuda_request_without_cuda_is_a_clear_error(onnx_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(EmbedderError, match="asked for"):
        OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx_model), device="cuda:0"))
