"""A folder of still images played as a video: frame *n* is the *n*-th file in name order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from selfreid.plugins.sources.base import BaseSource, SourceError, SourceSettings

__all__ = ["ImageFolderSource", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolderSource(BaseSource):
    """Sorted images of ``camera.uri`` (a folder) as frames, built as ``cls(settings, camera=...)``.

    Files are sorted by name, so zero-padded names (``000001.jpg``) play in order. A file that
    does not decode is counted as ``corrupt`` and keeps its frame number. Timestamps are media time:
    ``(index - 1) / fps`` plus ``camera.start_time`` (or the ingest start when none is configured);
    ``camera.realtime`` plays them at that rate.
    """

    class Settings(SourceSettings):
        fps: float = Field(
            10.0, gt=0, description="Nominal frame rate of the sequence (timestamps, realtime)."
        )
        recursive: bool = Field(
            False, description="Also take images from sub-folders (sorted by relative path)."
        )

    settings: Settings

    def __init__(self, settings: Settings, camera: Any) -> None:
        super().__init__(settings, camera)
        self.folder = Path(camera.uri).expanduser()
        if self.folder.is_file():
            raise SourceError(f"camera {camera.id}: {self.folder} is a file, not a folder of images "
                              "(for a video file use source: file)")
        if not self.folder.is_dir():
            raise SourceError(f"camera {camera.id}: image folder not found: {self.folder}")
        pattern = "**/*" if settings.recursive else "*"
        self.files = sorted(
            p for p in self.folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise SourceError(f"camera {camera.id}: no images ({', '.join(IMAGE_SUFFIXES)}) in {self.folder}")

    def _raw_frames(self) -> Iterator[tuple[np.ndarray | None, float]]:
        import cv2

        for n, path in enumerate(self.files):
            yield cv2.imread(str(path), cv2.IMREAD_COLOR), n / self.settings.fps
