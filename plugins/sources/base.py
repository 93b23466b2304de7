"""What every built-in source shares: frame pacing, ROI, size guard, counters and reconnection.

A concrete source only says how to get raw decoded images (``_raw_frames``); :class:`BaseSource`
turns them into :class:`~selfreid.plugins.contracts.Frame` objects:

* ``index`` is the 1-based number of the *decoded* frame (frame *n* of a file is the *n*-th decoded
  frame, as in MOT ground truth), so skipped frames keep their numbers;
* ``camera.stride`` keeps decoded frames 1, 1+s, 1+2s, ...; ``camera.target_fps`` then caps the rate on
  the media clock (files: deterministic down-sampling) or the wall clock (live sources);
* ``camera.realtime`` (recorded media) sleeps so that frames come out at native speed;
* ``camera.roi``: frames keep their full size (boxes stay in full-frame pixels) and every pixel outside
  the ROI is set to 0, so a detector cannot find anything there and no caller needs to shift boxes;
  a ROI that misses the frame altogether fails the camera (state ``failed``, ``last_error`` says why);
* frames above ``max_pixels`` are downscaled (or rejected, ``oversize: reject``) and counted;
* timestamps: live sources give the **capture time** (wall clock); recorded media (files, image
  folders, GStreamer with ``live: false``) give **media time**: the position in the recording plus
  ``camera.start_time`` when configured, else plus the time ingest started (``media_origin``, kept
  so that a position in the file can be shown beside the clock).

Problems never escape ``frames()``: each kind is logged once at WARNING and counted in ``counters``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.contracts import Frame, SourceState

__all__ = ["SourceError", "SourceSettings", "LiveSettings", "BaseSource", "Backoff", "Reader", "to_bgr"]

log = logging.getLogger("selfreid.sources")


class SourceError(RuntimeError):
    """A camera is misconfigured (missing file or folder, bad URI): raised at construction."""


class SourceSettings(BaseModel):
    """Settings every source accepts in ``camera.params``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pixels: int = Field(3840 * 2160, ge=1, description="Frames with more pixels (w*h) are oversized.")
    oversize: Literal["downscale", "reject"] = Field(
        "downscale",
        description="Oversized frames: shrink to max_pixels (aspect kept) or drop them (counted).",
    )


class LiveSettings(SourceSettings):
    """Reconnection of live sources: exponential backoff with jitter, capped."""

    reconnect_initial_s: float = Field(0.5, gt=0, description="First wait after a failure.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Cap on the wait between attempts.")
    reconnect_factor: float = Field(
        2.0, ge=1, description="Each further failure multiplies the wait by this."
    )
    reconnect_jitter: float = Field(
        0.25, ge=0, le=1, description="Random +-fraction on each wait, so cameras do not retry in lockstep."
    )
    max_reconnects: int | None = Field(
        None, ge=0, description="Give up (state 'failed') after this many; None = never."
    )


class Reader(Protocol):
    """What the reconnect loop needs from an opened stream (``cv2.VideoCapture`` fits)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


class Backoff:
    """Delays ``initial * factor**n``, capped at ``maximum``, each scaled by ``1 +- jitter``."""

    def __init__(self, initial: float, maximum: float, factor: float = 2.0, jitter: float = 0.25) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self.failures = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * self.factor**self.failures)
        self.failures += 1
        return min(self.maximum, base * (1.0 + random.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        self.failures = 0


def to_bgr(image: Any) -> np.ndarray | None:
    """A decoded image as uint8 HxWx3 BGR, or None when it is not an image (a corrupt frame)."""
    if not isinstance(image, np.ndarray) or image.size == 0 or image.dtype != np.uint8:
        return None
    if image.ndim == 2:
        import cv2

        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        import cv2

        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image if image.ndim == 3 and image.shape[2] == 3 else None


class BaseSource:
    """Shared machinery; subclasses implement ``_raw_frames`` and set ``live``.

    ``_raw_frames`` yields ``(image_or_None, media_time_s)``: ``None`` marks a frame that failed to
    decode (it keeps its number), media time is seconds since the stream start.
    """

    live = False

    def __init__(self, settings: SourceSettings, camera: Any) -> None:
        self.settings = settings
        self.camera = camera
        self.camera_id: str = camera.id
        self.roi: tuple[int, int, int, int] | None = camera.roi
        self.counters: Counter[str] = Counter()
        self.last_error: str | None = None
        self._state = SourceState.CONNECTING
        self._reconnects = 0
        self._stop = threading.Event()
        self._logged: set[str] = set()
        self._start_mono = time.monotonic()
        self.media_origin: float | None = None  # Unix time of media time 0, once frames() started

    @property
    def state(self) -> str:
        return self._state

    @property
    def reconnects(self) -> int:
        return self._reconnects

    def close(self) -> None:
        """Stop promptly: interrupts a backoff or realtime wait; ``frames()`` then returns."""
        self._stop.set()

    def problem(self, kind: str, message: str) -> None:
        """Count a problem; log it the first time this kind happens on this camera."""
        self.counters[kind] += 1
        self.last_error = message
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("camera %s: %s (further '%s' events are only counted)", self.camera_id, message, kind)

    def _raw_frames(self) -> Iterator[tuple[np.ndarray | None, float]]:
        raise NotImplementedError

    def _elapsed(self) -> float:
        """Seconds since ``frames()`` started: the media clock of live sources."""
        return time.monotonic() - self._start_mono

    def _origin(self, start_wall: float) -> float:
        """Unix time of media time 0: the recording's configured start, else when ingest started."""
        start_time = getattr(self.camera, "start_time", None)
        return start_time.timestamp() if start_time is not None and not self.live else start_wall

    def frames(self) -> Iterator[Frame]:
        self.media_origin = origin = self._origin(time.time())
        self._start_mono = start_mono = time.monotonic()
        period = 1.0 / self.camera.target_fps if self.camera.target_fps else 0.0
        next_due = 0.0
        index = 0
        for raw, media_t in self._raw_frames():
            if self._stop.is_set():
                break
            index += 1
            if raw is None:
                self.problem("corrupt", f"frame {index} could not be decoded")
                continue
            self.counters["decoded"] += 1
            if (index - 1) % self.camera.stride:
                continue
            if period:
                if media_t + 1e-9 < next_due:
                    continue
                next_due = max(next_due + period, media_t)
            if (
                self.camera.realtime
                and not self.live
                and self._stop.wait(max(0.0, start_mono + media_t - time.monotonic()))
            ):
                break
            image = self._prepare(raw, index)
            if image is None:
                if self._state == SourceState.FAILED:
                    break
                continue
            self.counters["frames"] += 1
            if not self.live:
                self._state = SourceState.RUNNING
            yield Frame(self.camera_id, index, origin + media_t, image)
        if self._state != SourceState.FAILED:
            self._state = SourceState.FINISHED

    def _prepare(self, raw: np.ndarray, index: int) -> np.ndarray | None:
        image = to_bgr(raw)
        if image is None:
            self.problem(
                "corrupt", f"frame {index} is not an 8-bit image (shape {getattr(raw, 'shape', None)})"
            )
            return None
        if self.roi is not None:
            if not self._roi_in_frame(image):
                return None
            image = self._mask_outside_roi(image)
        h, w = image.shape[:2]
        if h * w > self.settings.max_pixels:
            if self.settings.oversize == "reject":
                self.problem(
                    "oversize_rejected",
                    f"frame {index} is {w}x{h}, over max_pixels={self.settings.max_pixels}",
                )
                return None
            import cv2

            s = (self.settings.max_pixels / (h * w)) ** 0.5
            size = (max(1, int(w * s)), max(1, int(h * s)))
            self.problem(
                "oversize_downscaled",
                f"frames of {w}x{h} are over max_pixels; downscaled to {size[0]}x{size[1]}",
            )
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return image

    def _roi_in_frame(self, image: np.ndarray) -> bool:
        """False, and the camera failed, when the ROI does not overlap the frame (all would be masked);
        a warning, once, when it overlaps only in part (people beyond the frame's edge cannot be seen)."""
        x1, y1, x2, y2 = self.roi  # type: ignore[misc]
        h, w = image.shape[:2]
        if x1 < w and y1 < h:
            if (x2 > w or y2 > h) and not self.counters["roi_clipped"]:
                self.problem("roi_clipped", f"roi {self.roi} extends past the {w}x{h} frame; "
                             f"only ({x1}, {y1}, {min(x2, w)}, {min(y2, h)}) is watched")
            return True
        self._state = SourceState.FAILED
        self.problem("roi_outside_frame", f"roi {self.roi} lies outside the {w}x{h} frame; fix camera.roi")
        return False

    def _mask_outside_roi(self, image: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = self.roi  # type: ignore[misc]
        masked = np.zeros_like(image)
        masked[y1:y2, x1:x2] = image[y1:y2, x1:x2]
        return masked

    def _reconnecting(
        self, open_reader: Callable[[], Reader | None], settings: LiveSettings, reconnect: bool = True
    ) -> Iterator[np.ndarray | None]:
        """Frames of a live stream, reopened with backoff after every failure until ``close()``.

        ``open_reader`` returns an opened reader or None (and should call ``problem``). With
        ``reconnect=False`` the end of the stream finishes the source instead.
        """
        backoff = Backoff(
            settings.reconnect_initial_s,
            settings.reconnect_max_s,
            settings.reconnect_factor,
            settings.reconnect_jitter,
        )
        while not self._stop.is_set():
            reader = open_reader()
            if reader is not None:
                try:
                    while not self._stop.is_set():
                        ok, image = reader.read()
                        if not ok:
                            break
                        if self._state != SourceState.RUNNING:
                            log.info("camera %s: streaming", self.camera_id)
                        self._state = SourceState.RUNNING
                        backoff.reset()
                        yield image
                finally:
                    reader.release()
                if self._stop.is_set():
                    break
                if not reconnect:
                    self._state = SourceState.FINISHED
                    return
                reason = getattr(reader, "error", None) or "no frame: the stream ended or its read timeout passed"
                self.problem("stream_lost", f"stream lost ({reason})")
            elif not reconnect:
                self._state = SourceState.FAILED
                return
            if settings.max_reconnects is not None and self._reconnects >= settings.max_reconnects:
                self._state = SourceState.FAILED
                self.last_error = f"gave up after {self._reconnects} reconnects; last problem: {self.last_error}"
                log.error("camera %s: %s", self.camera_id, self.last_error)
                return
            self._state = SourceState.RECONNECTING
            delay = backoff.next_delay()
            self._reconnects += 1
            log.debug("camera %s: reconnect %d in %.2f s", self.camera_id, self._reconnects, delay)
            self._stop.wait(delay)
        self._state = SourceState.FINISHED
