"""Datasets of person crops for training (unlabelled) and evaluation (Market-1501 layout).

Every dataset yields ``(image_tensor, index)``: the index is the crop's memory-bank slot.
``camera_ids`` (int tensor), optional ``groups`` (e.g. ``"cam3/track17"``; crops sharing a key
come from one tracklet), optional ``times`` (seconds; site mode tells co-occurring tracklets by
them) and, for files, ``frames`` are metadata a real pool also has; identity labels are never part
of a training dataset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from selfreid.reid_model.transforms import bgr_to_pil

__all__ = [
    "DataError",
    "MarketItem",
    "MARKET_NAME",
    "parse_market_name",
    "read_market",
    "CropDataset",
    "FileCropDataset",
    "ArrayCropDataset",
    "image_folder_dataset",
    "camera_balanced_order",
    "split_market",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)(?:_\d+)?\.(?:jpg|jpeg|png)$", re.IGNORECASE)
"""``PPPP_cCsS_FFFFFF(_N)?.jpg``; PPPP = -1 marks junk, 0000 distractors (Market-1501)."""


class DataError(ValueError):
    """A data folder is missing, empty or not in the expected layout."""


@dataclass(frozen=True)
class MarketItem:
    path: Path
    pid: int
    camera: int
    sequence: int
    frame: int


def parse_market_name(name: str) -> tuple[int, int, int, int] | None:
    """``(pid, camera, sequence, frame)`` of a Market-style file name, or None."""
    m = MARKET_NAME.match(name)
    return (int(m[1]), int(m[2]), int(m[3]), int(m[4])) if m else None


def read_market(folder: str | Path) -> list[MarketItem]:
    """Every Market-named image of ``folder`` (sorted by name); other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    items = []
    for path in sorted(folder.iterdir()):
        parsed = parse_market_name(path.name)
        if parsed:
            items.append(MarketItem(path, *parsed))
    if not items:
        raise DataError(f"{folder}: no images named like Market-1501 (PPPP_cCsS_FFFFFF.jpg)")
    return items


class CropDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Base class: subclasses implement :meth:`image` (an RGB PIL image)."""

    def __init__(
        self,
        camera_ids: Sequence[int],
        groups: Sequence[str] | None = None,
        times: Sequence[float] | None = None,
    ) -> None:
        self.camera_ids = torch.as_tensor(list(camera_ids), dtype=torch.long)
        for name, values in (("group keys", groups), ("times", times)):
            if values is not None and len(values) != len(self.camera_ids):
                raise DataError(f"{len(values)} {name} for {len(self.camera_ids)} crops")
        self.groups = list(groups) if groups is not None else None
        self.times = torch.as_tensor(list(times), dtype=torch.float64) if times is not None else None
        self.transform: Callable[[Image.Image], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.camera_ids)

    def image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.transform is None:
            raise RuntimeError("set dataset.transform before iterating (see transforms.build_transform)")
        return self.transform(self.image(index)), index

    def group_ids(self) -> torch.Tensor | None:
        """Groups as integer codes (``-1`` for an empty key), or None without groups."""
        if self.groups is None:
            return None
        codes: dict[str, int] = {}
        return torch.tensor(
            [codes.setdefault(g, len(codes)) if g else -1 for g in self.groups], dtype=torch.long
        )


class FileCropDataset(CropDataset):
    """Crops read from image files (any mode, converted to RGB)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        camera_ids: Sequence[int],
        groups: Sequence[str] | None = None,
        frames: Sequence[int] | None = None,
        times: Sequence[float] | None = None,
    ) -> None:
        super().__init__(camera_ids, groups, times)
        self.paths = [Path(p) for p in paths]
        self.frames = list(frames) if frames is not None else None

    def image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as img:
            return img.convert("RGB")


class ArrayCropDataset(CropDataset):
    """Crops held in memory as uint8 BGR (or grayscale) numpy arrays, as the pool delivers them."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        camera_ids: Sequence[int],
        groups: Sequence[str] | None = None,
        times: Sequence[float] | None = None,
    ) -> None:
        if len(images) != len(camera_ids):
            raise DataError(f"{len(images)} images but {len(camera_ids)} camera ids")
        super().__init__(camera_ids, groups, times)
        self.images = list(images)

    def image(self, index: int) -> Image.Image:
        return bgr_to_pil(self.images[index])


def image_folder_dataset(folder: str | Path) -> FileCropDataset:
    """An unlabelled crop folder (searched recursively). The camera comes from a Market-style name
    (``_cN``) when present, else from the sub-folder (one sub-folder per camera, numbered by sorted
    name), else 0. Identity fields of the names are never read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    subdirs = {d: i for i, d in enumerate(sorted({p.parent for p in paths}))}
    cams, frames = [], []
    for p in paths:
        parsed = parse_market_name(p.name)
        cams.append(parsed[1] if parsed else subdirs[p.parent])
        frames.append(parsed[3] if parsed else -1)
    return FileCropDataset(paths, cams, frames=frames)


def camera_balanced_order(camera_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An epoch's sample order (length N) that visits cameras uniformly: each draw picks a camera at
    random, then that camera's next crop from a shuffled cycle (small cameras repeat, large ones are
    subsampled). Vectorised: no loop over samples."""
    cams, inverse = torch.unique(camera_ids, return_inverse=True)
    n = len(camera_ids)
    choice = torch.randint(len(cams), (n,), generator=generator)
    # k-th draw of camera c -> position k (mod size) in camera c's shuffled member list.
    onehot = torch.nn.functional.one_hot(choice, len(cams))
    occurrence = (onehot.cumsum(0) * onehot).sum(1) - 1
    sizes = torch.bincount(inverse, minlength=len(cams))
    keys = inverse.double() + torch.rand(n, generator=generator, dtype=torch.double) * 0.5
    members = torch.argsort(keys)  # grouped by camera, shuffled inside each camera
    starts = torch.cumsum(sizes, 0) - sizes
    return members[starts[choice] + occurrence % sizes[choice]]


def split_market(
    items: Sequence[MarketItem], holdout_ids: int, seed: int = 0
) -> tuple[list[MarketItem], list[MarketItem], list[MarketItem]]:
    """``(train, query, gallery)`` for evaluating on a folder that has no query/gallery split.

    ``holdout_ids`` identities seen in at least two cameras are drawn with ``seed``; for each, the
    crops of one camera (drawn too) are queries and its crops from the other cameras the gallery.
    Everything else (the other identities) is the training set, whose labels are not used.
    """
    rng = np.random.default_rng(seed)
    cams_of: dict[int, set[int]] = {}
    for it in items:
        if it.pid > 0:
            cams_of.setdefault(it.pid, set()).add(it.camera)
    eligible = sorted(pid for pid, cams in cams_of.items() if len(cams) >= 2)
    if len(eligible) < holdout_ids:
        raise DataError(
            f"only {len(eligible)} identities appear in two or more cameras, {holdout_ids} requested"
        )
    held = set(rng.choice(eligible, size=holdout_ids, replace=False).tolist()) if holdout_ids else set()
    query_cam = {pid: int(rng.choice(sorted(cams_of[pid]))) for pid in sorted(held)}
    train = [it for it in items if it.pid not in held]
    query = [it for it in items if it.pid in held and it.camera == query_cam[it.pid]]
    gallery = [it for it in items if it.pid in held and it.camera != query_cam[it.pid]]
    return train, query, gallery
