"""Image preprocessing: the one place that fixes colour order, scaling and input size.

Serving (ONNX export metadata, the embedder) and training use the same :class:`InputSpec`:
RGB order, ``(pixel/255 - mean) / std`` per channel, resized (bilinear, PIL) to
``input_size = (height, width)``. ``mean_255``/``std_255`` give the same normalisation on the
0-255 scale: ``(pixel - mean_255) / std_255``.

Training augmentation (method.md section 1.6): the seed uses a horizontal flip only; pad + random
crop and random erasing are optional switches (``AugmentConfig``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from selfreid.reid_model.config import AugmentConfig, ModelConfig

__all__ = [
    "InputSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SPEC",
    "COLOR_ORDER",
    "input_spec",
    "bgr_to_pil",
    "preprocess_bgr",
    "build_transform",
]

COLOR_ORDER = "RGB"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: channel order, per-channel mean/std on the 0-1 scale, (H, W)."""

    color_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]

    @property
    def mean_255(self) -> tuple[float, ...]:
        return tuple(m * 255.0 for m in self.mean)

    @property
    def std_255(self) -> tuple[float, ...]:
        return tuple(s * 255.0 for s in self.std)

    def as_dict(self) -> dict[str, str | list[float] | list[int]]:
        """Plain-JSON form (for ONNX metadata and checkpoints)."""
        return {
            "color_order": self.color_order,
            "mean": list(self.mean),
            "std": list(self.std),
            "mean_255": list(self.mean_255),
            "std_255": list(self.std_255),
            "input_size": list(self.input_size),
        }


def input_spec(cfg: ModelConfig) -> InputSpec:
    """The preprocessing a model built from ``cfg`` expects."""
    mean, std = _NORMS[cfg.input_norm]
    h, w = cfg.input_size
    return InputSpec(COLOR_ORDER, mean, std, (h, w))


INPUT_SPEC = input_spec(ModelConfig())
"""The default (seed) spec: RGB, ImageNet mean/std, 256x128."""


def bgr_to_pil(image: np.ndarray) -> Image.Image:
    """A uint8 BGR (``H x W x 3``), BGRA or grayscale (``H x W`` / ``H x W x 1``) array as an RGB image."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(image[:, :, 2::-1]))


def _to_tensor(img: Image.Image, spec: InputSpec) -> torch.Tensor:
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (arr - mean) / std


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    h, w = size
    return img if img.size == (w, h) else img.resize((w, h), Image.Resampling.BILINEAR)


def preprocess_bgr(
    images: Sequence[np.ndarray],
    input_size: tuple[int, int] = INPUT_SPEC.input_size,
    spec: InputSpec = INPUT_SPEC,
) -> torch.Tensor:
    """BGR (or grayscale) uint8 crops -> normalised float tensor ``[B, 3, H, W]`` (test transform)."""
    h, w = input_size
    spec = InputSpec(spec.color_order, spec.mean, spec.std, (h, w))
    if not len(images):
        return torch.empty(0, 3, *spec.input_size)
    return torch.stack([_to_tensor(_resize(bgr_to_pil(im), spec.input_size), spec) for im in images])


def build_transform(
    spec: InputSpec, augment: AugmentConfig | None = None, generator: torch.Generator | None = None
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> tensor. ``augment=None`` is the test transform; otherwise the training one
    (resize, flip, optional pad+crop, normalise, optional random erasing), drawing its randomness
    from ``generator`` (torch's global RNG when None) so that seeded runs repeat."""

    def rand() -> float:
        return float(torch.rand((), generator=generator))

    def transform(img: Image.Image) -> torch.Tensor:
        img = _resize(img, spec.input_size)
        if augment is None:
            return _to_tensor(img, spec)
        if rand() < augment.flip_p:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = _to_tensor(img, spec)
        if augment.pad_crop:
            x = _pad_crop(x, augment.pad_crop, rand)
        if augment.erasing_p and rand() < augment.erasing_p:
            x = _erase(x, rand)
        return x

    return transform


def _pad_crop(x: torch.Tensor, pad: int, rand: Callable[[], float]) -> torch.Tensor:
    """Zero-pad (zero = the mean colour after normalisation) and crop back to the input size."""
    _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    top, left = int(rand() * (2 * pad + 1)), int(rand() * (2 * pad + 1))
    return padded[:, top : top + h, left : left + w]


def _erase(
    x: torch.Tensor,
    rand: Callable[[], float],
    scale: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Random erasing (Zhong et al.) with the normalised mean (zero), as torchvision's RandomErasing(value=0)."""
    _, h, w = x.shape
    for _ in range(10):
        area = h * w * (scale[0] + rand() * (scale[1] - scale[0]))
        aspect = float(np.exp(np.log(ratio[0]) + rand() * (np.log(ratio[1]) - np.log(ratio[0]))))
        eh, ew = int(round((area * aspect) ** 0.5)), int(round((area / aspect) ** 0.5))
        if 0 < eh < h and 0 < ew < w:
            top, left = int(rand() * (h - eh + 1)), int(rand() * (w - ew + 1))
            x = x.clone()
            x[:, top : top + eh, left : left + ew] = 0.0
            return x
    return x
