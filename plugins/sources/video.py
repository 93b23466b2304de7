"""OpenCV sources: a video file, a network stream (RTSP/HTTP through FFmpeg) and a local webcam.

All three are built per camera as ``cls(settings, camera=camera_config)``, where ``settings`` is the
validated ``camera.params`` (see each ``Settings``) and ``camera`` is the
:class:`~selfreid.pipeline.config.ingest.CameraConfig` (``id``, ``uri``, ``stride``, ``target_fps``,
``roi``, ``realtime``). Pacing, ROI and counters are described in :mod:`.base`.

Example::

    cam = CameraConfig(id="hall", uri="/data/hall.mp4", stride=2)
    src = FileSource(FileSource.Settings(), camera=cam)
    for frame in src.frames():
        ...
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from selfreid.plugins.contracts import SourceState
from selfreid.plugins.sources.base import BaseSource, LiveSettings, SourceError, SourceSettings

__all__ = ["FileSource", "StreamSource", "WebcamSource"]


class FileSource(BaseSource):
    """A recorded video file, decoded with OpenCV.

    Runs as fast as the consumer pulls unless ``camera.realtime`` (then at native speed).
    Timestamps are media time: the frame's position ``(index - 1) / fps`` plus ``camera.start_time``
    (when the recording began), or plus the ingest start when no start time is configured.
    With ``params.loop`` the file starts over at its end (soak tests, demos): frame numbers and
    media time go on increasing across passes, so pacing, stride and timestamps stay continuous.
    A missing file raises :class:`SourceError` at construction; a file OpenCV cannot decode
    (unsupported codec, not a video) ends ``frames()`` with state ``failed`` and ``last_error``.
    """

    class Settings(SourceSettings):
        fps: float | None = Field(
            None, gt=0, description="Frame rate for timestamps and realtime pacing; None = the container's."
        )
        max_consecutive_failures: int = Field(
            25, ge=1, description="Undecodable frames in a row after which the file is treated as ended."
        )
        loop: bool = Field(
            False, description="Start over at the end of the file, forever (counted as 'loops')."
        )

    settings: Settings

    def __init__(self, settings: Settings, camera: Any) -> None:
        super().__init__(settings, camera)
        self.path = Path(camera.uri).expanduser()
        if self.path.is_dir():
            raise SourceError(f"camera {camera.id}: {self.path} is a directory, not a video file "
                              "(for a folder of images use source: images)")
        if not self.path.is_file():
            raise SourceError(f"camera {camera.id}: video file not found: {self.path}")
        self.fps: float | None = settings.fps

    def _raw_frames(self) -> Iterator[tuple[np.ndarray | None, float]]:
        offset = 0  # frames of the earlier passes (loop)
        while True:
            n = yield from self._one_pass(offset)
            if n == 0 or not self.settings.loop or self._stop.is_set():
                return
            offset += n
            self.counters["loops"] += 1

    def _one_pass(self, offset: int) -> Generator[tuple[np.ndarray | None, float], None, int]:
        """Decode the file once, numbering frames from ``offset``; return how many were read
        (a file that cannot be read at all fails the source on the first pass)."""
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        n = 0
        try:
            if not cap.isOpened():
                if offset == 0:
                    self._fail(f"cannot open {self.path} (not a video, or no OpenCV backend reads it)")
                return 0
            if self.fps is None:  # once: a looping file is not re-probed (or re-warned about) per pass
                self.fps = self._container_fps(cap.get(cv2.CAP_PROP_FPS))
            fps = self.fps
            # pending: failed reads not yet known to be corrupt frames mid-file rather than the end
            pending = 0
            while pending < self.settings.max_consecutive_failures:
                ok, image = cap.read()
                if not ok:
                    pending += 1
                    continue
                for _ in range(pending):
                    yield None, (offset + n) / fps
                    n += 1
                pending = 0
                yield image, (offset + n) / fps
                n += 1
            if n == 0 and offset == 0:
                self._fail(f"cannot decode any frame of {self.path} (unsupported codec?)")
            return n
        finally:
            cap.release()

    def _fail(self, message: str) -> None:
        self._state = SourceState.FAILED
        self.problem("open_failed", message)

    def _container_fps(self, reported: float) -> float:
        if reported and 0 < reported < 1000:
            return float(reported)
        self.problem(
            "no_fps", f"{self.path.name} reports no frame rate; timestamps assume 25 fps (set params.fps)"
        )
        return 25.0


class _CaptureSource(BaseSource):
    """What :class:`StreamSource` and :class:`WebcamSource` share: a live ``cv2.VideoCapture``
    (``_open``), reopened with backoff by :meth:`BaseSource._reconnecting`."""

    live = True
    settings: LiveSettings

    def __init__(self, settings: LiveSettings, camera: Any) -> None:
        super().__init__(settings, camera)
        if not camera.uri.strip():
            raise SourceError(f"camera {camera.id}: empty stream URL")

    def _open(self) -> Any:
        raise NotImplementedError

    def _open_reader(self) -> Any:
        cap = self._open()
        if cap.isOpened():
            return cap
        cap.release()
        self.problem("open_failed", f"cannot open {self._describe()}")
        return None

    def _describe(self) -> str:
        return str(self.camera.uri)

    def _raw_frames(self) -> Iterator[tuple[np.ndarray | None, float]]:
        for image in self._reconnecting(self._open_reader, self.settings):
            yield image, self._elapsed()


class StreamSource(_CaptureSource):
    """A live network stream (``rtsp://``, ``http://``, ...) through OpenCV's FFmpeg backend.

    Never raises for a transient failure: a dead URL or a dropped stream sets ``state`` to
    ``reconnecting`` and reopens after an exponential backoff with jitter (capped at
    ``reconnect_max_s``), counting ``reconnects``. ``close()`` interrupts a backoff wait at once;
    a read already blocked in FFmpeg returns within ``read_timeout_s`` (OpenCV cannot cancel it).
    Frames are read as they arrive; timestamps are the wall clock at capture.
    """

    class Settings(LiveSettings):
        open_timeout_s: float = Field(10.0, gt=0, description="FFmpeg: give up opening after this long.")
        read_timeout_s: float = Field(
            5.0,
            gt=0,
            description="FFmpeg: a frame not arriving for this long = stream lost (also bounds close()).",
        )

    settings: Settings

    def __init__(self, settings: Settings, camera: Any) -> None:
        super().__init__(settings, camera)

    def _open(self) -> Any:
        import cv2

        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.settings.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.settings.read_timeout_s * 1000),
        ]
        return cv2.VideoCapture(self.camera.uri, cv2.CAP_FFMPEG, timeouts)


class WebcamSource(_CaptureSource):
    """A local camera by index (``uri: "0"``), with the same reconnection as :class:`StreamSource`."""

    class Settings(LiveSettings):
        width: int | None = Field(None, ge=1, description="Requested capture width (the driver may refuse).")
        height: int | None = Field(None, ge=1, description="Requested capture height.")

    settings: Settings

    def __init__(self, settings: Settings, camera: Any) -> None:
        super().__init__(settings, camera)
        if not camera.uri.strip().isdigit():
            raise SourceError(
                f"camera {camera.id}: webcam uri must be a device index such as '0', got {camera.uri!r}"
            )
        self.device_index = int(camera.uri)

    def _open(self) -> Any:
        import cv2

        cap = cv2.VideoCapture(self.device_index)
        if self.settings.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.settings.width)
        if self.settings.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.settings.height)
        return cap

    def _describe(self) -> str:
        return f"webcam {self.device_index}"
