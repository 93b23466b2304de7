"""Decoding what crosses Redis and the API: byte strings, pool crops and uploaded images.

An uploaded image can be small on the wire and huge once decoded (a 1 KB JPEG may declare
20000 x 20000 pixels = 1.2 GB of BGR). :func:`decode_jpeg` with ``max_pixels`` reads the size from
the file's header first (:func:`image_size`) and refuses an image over the limit before anything
is decoded.
"""

from __future__ import annotations

import io
import struct

import numpy as np

__all__ = ["ImageTooLarge", "as_text", "decode_jpeg", "image_size"]


class ImageTooLarge(ValueError):
    """The image's header declares more pixels than allowed; nothing was decoded."""

    def __init__(self, size: str, max_pixels: int) -> None:
        super().__init__(f"the image is {size} pixels, over the limit of {max_pixels:,} (api.max_image_pixels); "
                         "send a smaller image")
        self.max_pixels = max_pixels


def as_text(value: bytes | str) -> str:
    """A Redis reply (bytes without ``decode_responses``) as text."""
    return value.decode() if isinstance(value, bytes) else value


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from the image header (JPEG, PNG, BMP, WebP, TIFF, ...) without
    decoding the pixels; ``None`` when no format recognises the header.

    Pillow's format plugins are asked directly, not ``PIL.Image.open``: that one refuses sizes
    beyond its own bound (so the real size could not be reported), and other libraries replace it
    (Ultralytics' version installs and imports a HEIF package when a header is not recognised).
    """
    from PIL import Image

    Image.init()  # registers every format plugin (once)
    prefix = data[:16]
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        try:
            recognised = accept(prefix) if accept is not None else True
            if not recognised or isinstance(recognised, str):  # a str: recognised but unsupported
                continue
            with factory(io.BytesIO(data), "") as image:  # parses the header only
                return image.size
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError, struct.error):
            continue
    return None


def decode_jpeg(data: bytes, max_pixels: int | None = None) -> np.ndarray | None:
    """A BGR image, or ``None`` when ``data`` is not a decodable image.

    With ``max_pixels``, the header is read first: :class:`ImageTooLarge` is raised, before any
    decoding, for an image declaring more pixels than that, and an image whose header cannot be
    read is not decoded at all (``None``), so no format escapes the limit.
    """
    import cv2

    if not data:
        return None
    if max_pixels is not None:
        size = image_size(data)
        if size is None:
            return None
        if size[0] * size[1] > max_pixels:
            raise ImageTooLarge(f"{size[0]}x{size[1]} = {size[0] * size[1]:,}", max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None
