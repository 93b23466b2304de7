"""Convolutional backbones that return the last feature map (no pooling, no classifier).

``build_backbone(cfg)`` gives ``(module, channels)``: ``module(x)`` maps ``[B, 3, H, W]`` to
``[B, channels, H/s, W/s]`` with ``s = 16`` when ``last_stride == 1`` (the seed: a ResNet-50
whose layer4 keeps the 16x8 map of a 256x128 input, section 1.2 of method.md) and 32 otherwise.

ImageNet weights come from :mod:`selfreid.reid_model.weights` (local file, torchvision cache or
download, or the offline deep-sort MobileNetV2 file).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from selfreid.reid_model.config import ModelConfig
from selfreid.reid_model.weights import (
    WeightsError,
    deepsort_mobilenet_path,
    load_deepsort_mobilenet,
    load_state_dict_file,
    torchvision_cache_path,
)

__all__ = ["build_backbone", "BACKBONE_CHANNELS"]

BACKBONE_CHANNELS = {"resnet50": 2048, "resnet18": 512, "mobilenet_v2": 1280}
"""Channels of each backbone's last feature map (the heads' input width)."""


def _resnet(cfg: ModelConfig) -> nn.Module:
    import torchvision.models as tvm

    net = getattr(tvm, cfg.backbone)(weights=None)
    if cfg.pretrained == "imagenet":
        _load_torchvision_state(net, cfg)
    block = net.layer4[0]
    conv = block.conv2 if hasattr(block, "conv2") and block.conv2.stride != (1, 1) else block.conv1
    conv.stride = (cfg.last_stride, cfg.last_stride)
    if block.downsample is not None:
        block.downsample[0].stride = (cfg.last_stride, cfg.last_stride)
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )


def _mobilenet(cfg: ModelConfig) -> nn.Module:
    import torchvision.models as tvm

    features = tvm.mobilenet_v2(weights=None).features
    if cfg.pretrained == "imagenet":
        if cfg.weights_path:
            _load_matching(
                features, load_state_dict_file(cfg.weights_path), cfg.weights_path, prefix="features."
            )
        elif (cached := torchvision_cache_path("mobilenet_v2")) is not None:
            _load_matching(features, load_state_dict_file(cached), "cache", "features.")
        elif deepsort_mobilenet_path() is not None:
            load_deepsort_mobilenet(features)
        else:
            _load_torchvision_state(features, cfg, prefix="features.")
    # The last stride-2 block is features[14] (its depthwise conv); stride 1 keeps a 16x8 map.
    features[14].conv[1][0].stride = (cfg.last_stride, cfg.last_stride)
    return cast(nn.Module, features)  # torchvision has no type information


def _load_matching(
    module: nn.Module, state: dict[str, torch.Tensor], source: object, prefix: str = ""
) -> None:
    """Load ``state`` (optionally under ``prefix``) into ``module``; every module tensor must be present
    with the right shape, extra tensors (a classifier) are ignored. Anything else is a WeightsError."""
    target = module.state_dict()
    if prefix and not any(k in target for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing = [k for k in target if k not in state]
    if missing:
        raise WeightsError(
            f"{source}: does not fit this backbone ({len(missing)} tensors missing, e.g. {missing[0]!r})"
        )
    for key, expected in target.items():
        if state[key].shape != expected.shape:
            raise WeightsError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, needs {tuple(expected.shape)}"
            )
    module.load_state_dict({k: state[k] for k in target})


def _load_torchvision_state(module: nn.Module, cfg: ModelConfig, prefix: str = "") -> None:
    """Local file, else torchvision's cache, else torchvision's download (needs a network)."""
    if cfg.weights_path:
        _load_matching(module, load_state_dict_file(cfg.weights_path), cfg.weights_path, prefix)
        return
    cached = torchvision_cache_path(cfg.backbone)
    if cached is not None:
        _load_matching(module, load_state_dict_file(cached), cached, prefix)
        return
    import torchvision.models as tvm

    from selfreid.reid_model.weights import TORCHVISION_WEIGHTS

    enum_name, member = TORCHVISION_WEIGHTS[cfg.backbone].split(".")
    try:
        state = getattr(tvm, enum_name)[member].get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - urllib/ssl/OSError variants
        raise WeightsError(
            f"cannot get ImageNet weights for {cfg.backbone}: not in the torchvision cache and the download failed "
            f"({type(exc).__name__}: {exc}); set model.weights_path to a local .pth, use pretrained: none, "
            "or backbone: mobilenet_v2 (offline weights)"
        ) from None
    _load_matching(module, state, TORCHVISION_WEIGHTS[cfg.backbone], prefix)


def build_backbone(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """The configured backbone (weights loaded) and its output channel count."""
    builder = _mobilenet if cfg.backbone == "mobilenet_v2" else _resnet
    return builder(cfg), BACKBONE_CHANNELS[cfg.backbone]
