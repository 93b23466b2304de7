"""Decoding what crosses Redis: its byte strings, and the JPEG crops of the pool."""

from __future__ import annotations

import numpy as np

__all__ = ["as_text", "decode_jpeg"]


def as_text(value: bytes | str) -> str:
    """A Redis reply (bytes without ``decode_responses``) as text."""
    return value.decode() if isinstance(value, bytes) else value


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """A BGR image, or ``None`` when ``data`` is not a decodable image."""
    import cv2

    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None and image.size else None
