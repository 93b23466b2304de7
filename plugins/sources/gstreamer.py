"""A GStreamer pipeline as a camera, read through an ``appsink`` with PyGObject.

Optional: PyGObject (``gi``) and GStreamer 1.x are imported when the source is built, never at import
time; without them construction fails with an install hint (``selfreid doctor`` reports it too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import Field

from selfreid.plugins.sources.base import BaseSource, LiveSettings, SourceError

__all__ = ["GStreamerSource", "SINK_NAME", "gst_module"]

SINK_NAME = "selfreid"
INSTALL_HINT = (
    "the gstreamer source needs PyGObject and GStreamer 1.x: on Debian/Ubuntu "
    "`apt install libgirepository1.0-dev gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-libav`, "
    "then `pip install 'selfreid[gstreamer]'`"
)


def _keep_the_gcc_unwinder_global() -> None:
    """Put libgcc_s's unwinder in the global symbol scope before GStreamer loads.

    libgstreamer links libunwind, and GObject introspection opens it with global binding, so
    libunwind's ``_Unwind_*`` symbols would then interpose libgcc_s's for every C++ library loaded
    later in the process: onnxruntime's exceptions (a bad model file, say) unwind through the wrong
    unwinder and abort the process instead of raising. Loading libgcc_s globally first keeps its
    definitions the ones that later libraries bind to.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("gcc_s")
    if name:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)


def gst_module() -> Any:
    """``gi.repository.Gst``, initialised; :class:`SourceError` with an install hint when missing."""
    _keep_the_gcc_unwinder_global()
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{INSTALL_HINT} ({exc})") from None
    Gst.init(None)
    return Gst


class _AppSinkReader:
    """A playing pipeline; ``read()`` pulls one BGR frame from its appsink (cv2.VideoCapture-like)."""

    def __init__(self, gst: Any, pipeline: Any, timeout_s: float) -> None:
        self.gst, self.pipeline = gst, pipeline
        self.sink = pipeline.get_by_name(SINK_NAME)
        self.timeout_ns = int(timeout_s * 1e9)
        self.last_pts_s: float | None = None
        self.error: str | None = None

    def read(self) -> tuple[bool, np.ndarray | None]:
        sample = self.sink.emit("try-pull-sample", self.timeout_ns)
        if sample is None:
            self.error = self._bus_error() or (
                "end of stream" if self.sink.get_property("eos") else "no frame within the timeout"
            )
            return False, None
        caps = sample.get_caps().get_structure(0)
        width, height = caps.get_value("width"), caps.get_value("height")
        buffer = sample.get_buffer()
        pts = buffer.pts
        self.last_pts_s = pts / 1e9 if pts != self.gst.CLOCK_TIME_NONE else None
        data = buffer.extract_dup(0, buffer.get_size())
        row = len(data) // height  # rows may be padded to 4 bytes
        image = np.frombuffer(data, np.uint8, count=row * height).reshape(height, row)[:, : width * 3]
        return True, image.reshape(height, width, 3).copy()

    def _bus_error(self) -> str | None:
        message = self.pipeline.get_bus().pop_filtered(self.gst.MessageType.ERROR)
        if message is None:
            return None
        err, _debug = message.parse_error()
        return str(err.message)

    def release(self) -> None:
        self.pipeline.set_state(self.gst.State.NULL)


class GStreamerSource(BaseSource):
    """``camera.uri`` is a ``gst-launch-1.0`` description, built as ``cls(settings, camera=...)``.

    Without an appsink in the description, ``! videoconvert ! video/x-raw,format=BGR ! appsink``
    is appended; a description with its own appsink must name it ``selfreid`` and deliver BGR.
    Example: ``rtspsrc location=rtsp://cam/1 latency=100 ! decodebin`` or
    ``nvv4l2decoder ...`` for hardware decoding. With ``live`` (the default) an error or the end
    of the stream sets ``state`` to ``reconnecting`` and the pipeline is rebuilt after a backoff,
    as for :class:`~selfreid.plugins.sources.video.StreamSource`; with ``live: false`` (a file) the
    end of the stream finishes the source and timestamps follow the buffers' PTS.
    """

    class Settings(LiveSettings):
        live: bool = Field(
            True,
            description="Live camera (drop late frames, reconnect) or recorded media (keep all, finish).",
        )
        pull_timeout_s: float = Field(10.0, gt=0, description="No frame for this long = stream lost.")

    settings: Settings

    def __init__(self, settings: Settings, camera: Any) -> None:
        super().__init__(settings, camera)
        self.live = settings.live
        self._gst = gst_module()
        self.description = self._with_appsink(camera.uri)
        self._parse().set_state(self._gst.State.NULL)  # a syntax error or unknown element fails here, once
        self._reader: _AppSinkReader | None = None

    def _with_appsink(self, uri: str) -> str:
        if "appsink" in uri:
            if f"name={SINK_NAME}" not in uri:
                raise SourceError(
                    f"camera {self.camera_id}: name the pipeline's appsink '{SINK_NAME}' "
                    f"(appsink name={SINK_NAME})"
                )
            return uri
        drop = "true" if self.live else "false"
        sink = f"appsink name={SINK_NAME} max-buffers=2 drop={drop} sync=false"
        return f"{uri} ! videoconvert ! video/x-raw,format=BGR ! {sink}"

    def _parse(self) -> Any:
        from gi.repository import GLib

        try:
            return self._gst.parse_launch(self.description)
        except GLib.Error as exc:
            raise SourceError(f"camera {self.camera_id}: bad GStreamer pipeline: {exc.message}") from None

    def close(self) -> None:
        """Stop at once: stopping the pipeline also wakes a pull that is waiting for a frame."""
        super().close()
        if self._reader is not None:
            self._reader.release()

    def _open_reader(self) -> _AppSinkReader | None:
        pipeline = self._parse()
        if pipeline.set_state(self._gst.State.PLAYING) == self._gst.StateChangeReturn.FAILURE:
            pipeline.set_state(self._gst.State.NULL)
            self.problem("open_failed", f"pipeline failed to start: {self.description}")
            return None
        self._reader = _AppSinkReader(self._gst, pipeline, self.settings.pull_timeout_s)
        return self._reader

    def _raw_frames(self) -> Iterator[tuple[np.ndarray | None, float]]:
        for image in self._reconnecting(self._open_reader, self.settings, reconnect=self.live):
            pts = self._reader.last_pts_s if self._reader else None
            yield image, (pts if pts is not None and not self.live else self._elapsed())
        if self._reader is not None and self._reader.error and self._reader.error != "end of stream":
            self.problem("stream_error", self._reader.error)
