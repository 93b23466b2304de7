"""The detection stage: N cameras -> one batched detector -> per-camera trackers -> crop policy -> pool.

Threads, so that decoding, tracking and Redis writes overlap with detection:

* one **reader** per camera decodes frames into a small per-camera queue (files wait for room,
  live cameras drop the oldest frame and count it);
* the **detection loop** (the caller's thread) takes the oldest waiting frame of every camera
  that has one and runs a single ``detect`` call over that batch;
* one **tracker thread** runs each camera's tracker and the crop policy in frame order and
  hands the JPEG crops to the pool's bounded queue;
* one **writer** flushes that queue to Redis in pipelined batches (when Redis is slow or down
  the pool drops its oldest crops and counts them; it never blocks detection).

Hot-path counters are plain ints; every ``status_interval_s`` they become a status report in
Redis (:mod:`selfreid.pipeline.runtime.status`), Prometheus metrics and the caller's ``on_status``.
A camera that cannot open, fails or crashes is marked ``failed`` and the others keep going.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from selfreid.pipeline.config import AppConfig, CameraConfig
from selfreid.pipeline.ingest.camera_assignment import claim_cameras, replica_instance, with_cameras
from selfreid.pipeline.ingest.crop_policy import CropPolicy
from selfreid.pipeline.runtime.metrics import MetricsServer, StageMetrics, start_metrics_server
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import check_credentials, connect
from selfreid.pipeline.runtime.signals import StopFlag
from selfreid.pipeline.runtime.status import publish_status, record_media_origin
from selfreid.plugins import registry
from selfreid.plugins.contracts import Detection, Detector, Frame, PoolStore, Source, SourceState, Tracker

__all__ = [
    "CameraStats",
    "PoolStats",
    "StatusCallback",
    "FrameCallback",
    "run_ingest",
    "redis_client",
]

log = logging.getLogger(__name__)

STATES = [
    SourceState.CONNECTING,
    SourceState.RUNNING,
    SourceState.RECONNECTING,
    SourceState.FINISHED,
    SourceState.FAILED,
]
COUNTERS = {
    "frames": "Frames processed (detected, tracked)",
    "detections": "Person boxes detected",
    "crops": "Crops accepted by the crop policy",
    "written": "Crops written to the Redis pool",
    "frame_drops": "Frames dropped because detection was behind a live camera",
    "crop_drops": "Crops dropped (oldest first) while Redis was slow or down",
    "reconnects": "Source reconnections",
    "errors": "Frames lost to detector/tracker/source errors",
    "corrupt_frames": "Frames the source could not decode",
    "oversize_frames": "Frames over the source's max_pixels (downscaled or rejected)",
}
GAUGES = {"fps": "Frames processed per second over the last status interval"}
POOL_GAUGES = {
    "queued": "Crops waiting locally for Redis",
    "redis_up": "1 when the last pool write succeeded",
}


@dataclass
class CameraStats:
    """One camera's counters (cumulative) and state, as reported every status interval."""

    camera_id: str
    state: str = SourceState.CONNECTING
    fps: float = 0.0
    frames: int = 0
    detections: int = 0
    crops: int = 0
    written: int = 0
    frame_drops: int = 0
    crop_drops: int = 0
    reconnects: int = 0
    errors: int = 0
    source_counters: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PoolStats:
    queued: int = 0
    written: int = 0
    dropped: int = 0
    connected: bool = True
    last_error: str = ""


StatusCallback = Callable[[dict[str, CameraStats], PoolStats], None]
FrameCallback = Callable[[Frame, list[Detection], list[Detection]], None]
"""``(frame, detections, tracks)`` after tracking: a tap for evaluation and overlays (tracker thread)."""


def redis_client(url: str) -> redis.Redis:
    """A client that fails fast (one immediate retry) so the pool's own backoff decides the pace."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return connect(
        url, socket_connect_timeout=2.0, socket_timeout=10.0, retry=Retry(NoBackoff(), 1)
    )


class _Camera:
    """Runtime state of one camera: its source, tracker, crop policy, frame queue and counters."""

    def __init__(self, cfg: CameraConfig, frame_queue: int) -> None:
        self.cfg = cfg
        self.stats = CameraStats(cfg.id)
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=frame_queue)
        self.source: Source | None = None
        self.tracker: Tracker | None = None
        self.policy: CropPolicy | None = None
        self.reader: threading.Thread | None = None
        self.done = False
        self.crashed = False
        self._in_flight = 0  # frames taken from the queue whose detection/tracking has not ended yet
        self._in_flight_lock = threading.Lock()
        self._frames_at_tick = 0
        self._source_error: str | None = None
        self.recorded_origin: float | None = None  # the media origin last written to Redis

    def unrecorded_origin(self) -> float | None:
        """The recording's media origin (Unix time of media time 0) when Redis does not have it yet."""
        source = self.source
        if source is None or source.live or source.media_origin in (None, self.recorded_origin):
            return None
        return source.media_origin

    def fail(self, message: str) -> None:
        """Mark this camera failed (it stops; the others continue)."""
        self.crashed = True
        self.done = True
        self.stats.last_error = message
        log.error("camera %s: %s", self.cfg.id, message)

    def error(self, what: str, exc: BaseException) -> None:
        """A lost frame: counted, logged once per kind of failure."""
        self.stats.errors += 1
        message = f"{what}: {type(exc).__name__}: {exc}"
        if message != self.stats.last_error:
            log.warning("camera %s: %s", self.cfg.id, message)
        self.stats.last_error = message

    def take(self) -> Frame | None:
        """The next decoded frame for detection; :meth:`processed` must follow once it is tracked."""
        try:
            frame = self.frames.get_nowait()
        except queue.Empty:
            return None
        with self._in_flight_lock:
            self._in_flight += 1
        return frame

    def processed(self) -> None:
        """A frame from :meth:`take` went through detection and tracking (or failed there)."""
        with self._in_flight_lock:
            self._in_flight -= 1

    def discard_queued(self) -> None:
        """Drop the frames decoded after a stop: never detected, not counted."""
        while True:
            try:
                self.frames.get_nowait()
            except queue.Empty:
                return

    def drained(self) -> bool:
        """Every decoded frame has been detected and tracked (its crops are in the pool's queue)."""
        with self._in_flight_lock:
            return self._in_flight == 0 and self.frames.empty()

    def refresh(self, dt: float) -> None:
        """Fold the source's state and counters into ``stats`` and measure fps over ``dt``."""
        s = self.stats
        s.fps = (s.frames - self._frames_at_tick) / dt if dt > 0 else 0.0
        self._frames_at_tick = s.frames
        if self.source is not None:
            s.reconnects = self.source.reconnects
            s.source_counters = dict(self.source.counters)
            source_error = self.source.last_error
            if source_error and source_error != self._source_error:  # a new problem of the source
                s.last_error = self._source_error = source_error
        if self.crashed or self.source is None:
            s.state = SourceState.FAILED
        elif self.source.state == SourceState.FAILED:
            s.state = SourceState.FAILED
            s.last_error = self.source.last_error or s.last_error
        elif self.done and self.drained():
            s.state = SourceState.FINISHED
        elif self.source.state == SourceState.FINISHED:  # its source is exhausted, its last frames are not
            s.state = SourceState.RUNNING
        else:
            s.state = self.source.state


def _source_problems(counters: dict[str, int]) -> dict[str, int]:
    """The built-in sources' problem counters (plugins/sources/base.py) as metric values."""
    oversize = counters.get("oversize_rejected", 0) + counters.get("oversize_downscaled", 0)
    return {"corrupt_frames": counters.get("corrupt", 0), "oversize_frames": oversize}


def _frame_rate(cam: CameraConfig) -> int:
    """Frames per second the tracker sees (its lost-track buffer is counted in frames)."""
    return max(1, round(cam.target_fps or 30.0 / cam.stride))


def _open_camera(i: int, cam: CameraConfig, cfg: AppConfig) -> _Camera:
    """Build one camera's source, tracker and policy; a failure marks only this camera failed."""
    camera = _Camera(cam, cfg.ingest.frame_queue)
    t = cfg.ingest.tracker
    try:
        camera.source = registry.create(
            "sources", cam.source, cam.params, where=f"ingest.cameras[{i}]", camera=cam
        )
        camera.tracker = registry.create(
            "trackers", t.plugin, t.params, where="ingest.tracker", frame_rate=_frame_rate(cam)
        )
    except Exception as exc:  # noqa: BLE001 - any camera problem must leave the others running
        camera.fail(f"cannot start: {exc}")
        return camera
    camera.policy = CropPolicy(cfg.ingest.crops)
    return camera


def _read_frames(
    camera: _Camera, source: Source, stop: StopFlag, ready: threading.Event, max_frames: int | None
) -> None:
    """Reader thread: decode ``source`` (the camera's) into the camera's queue until it ends, ``stop``,
    or ``max_frames``."""
    n = 0
    try:
        for frame in source.frames():
            if stop.is_set():
                break
            if source.live:
                _put_dropping_oldest(camera, frame)
            elif not _put_waiting(camera.frames, frame, stop):
                break
            ready.set()
            n += 1
            if max_frames is not None and n >= max_frames:
                break
    except Exception as exc:  # noqa: BLE001 - a source bug fails this camera only
        camera.fail(f"source crashed: {type(exc).__name__}: {exc}")
    finally:
        camera.done = True
        ready.set()


def _put_dropping_oldest(camera: _Camera, frame: Frame) -> None:
    while True:
        try:
            camera.frames.put_nowait(frame)
            return
        except queue.Full:
            try:
                camera.frames.get_nowait()
                camera.stats.frame_drops += 1
            except queue.Empty:
                pass


def _put_waiting(frames: queue.Queue, frame: Frame, stop: StopFlag) -> bool:
    while not stop.is_set():
        try:
            frames.put(frame, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


class _Ingest:
    """Wires the threads together; see the module docstring."""

    def __init__(
        self,
        cfg: AppConfig,
        client: redis.Redis,
        stop: StopFlag,
        on_status: StatusCallback | None,
        on_frame: FrameCallback | None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.stop = stop
        self.on_status = on_status
        self.on_frame = on_frame
        self.pool: PoolStore = open_pool(cfg, client)
        d = cfg.ingest.detector
        self.detector: Detector = registry.create(
            "detectors", d.plugin, d.params, where="ingest.detector", device=cfg.ingest.device
        )
        self.cameras = [_open_camera(i, cam, cfg) for i, cam in enumerate(cfg.ingest.cameras)]
        self.ready = threading.Event()
        self.tracked: queue.Queue[tuple[list[tuple[_Camera, Frame]], list[list[Detection] | None]] | None] = (
            queue.Queue(maxsize=4)
        )
        self.crops_ready = threading.Event()
        self.metrics = StageMetrics("ingest", COUNTERS, GAUGES, {"state": ("Camera source state", STATES)})
        self.pool_metrics = StageMetrics("ingest_pool", gauges=POOL_GAUGES, labels=())
        self.metrics_port: int | None = None  # the bound port, once the endpoint is up
        self._last_tick = time.monotonic()

    # ------------------------------------------------------------------ threads
    def _track_loop(self) -> None:
        """Tracker thread: per-camera tracker + crop policy, in frame order; crops -> the pool queue."""
        while (item := self.tracked.get()) is not None:
            for (camera, frame), dets in zip(*item):
                try:
                    if dets is not None:
                        self._track(camera, frame, dets)
                finally:
                    camera.processed()

    def _track(self, camera: _Camera, frame: Frame, dets: list[Detection]) -> None:
        """One detected frame of one camera: tracker, crop policy, counters; crops -> the pool queue."""
        try:
            tracks = camera.tracker.update(frame, dets)  # type: ignore[union-attr]
            crops = camera.policy.select(frame, tracks)  # type: ignore[union-attr]
            if self.on_frame is not None:
                self.on_frame(frame, dets, tracks)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the camera
            camera.error("tracking/cropping failed", exc)
            return
        camera.stats.frames += 1
        camera.stats.detections += len(dets)
        if crops:
            camera.stats.crops += len(crops)
            self.pool.enqueue(crops)
            self.crops_ready.set()

    def _write_loop(self, done: threading.Event) -> None:
        """Writer thread: flush the pool queue whenever crops arrive (the pool paces retries)."""
        while not done.is_set():
            self.crops_ready.wait(0.1)
            self.crops_ready.clear()
            self.pool.flush()

    # ------------------------------------------------------------------ detection loop
    def _detect(self, batch: list[tuple[_Camera, Frame]]) -> list[list[Detection] | None]:
        """One detector call for the batch; on failure retry image by image to isolate the culprit."""
        images = [frame.image for _, frame in batch]
        try:
            return list(self.detector.detect(images))
        except Exception as exc:  # noqa: BLE001
            if len(batch) == 1:
                batch[0][0].error("detection failed", exc)
                return [None]
        return [self._detect([item])[0] for item in batch]

    def _next_batch(self) -> list[tuple[_Camera, Frame]]:
        self.ready.clear()
        return [(c, f) for c in self.cameras if (f := c.take()) is not None]

    def run(self, max_frames: int | None) -> dict[str, CameraStats]:
        tracker_thread = threading.Thread(target=self._track_loop, name="ingest-track", daemon=True)
        writer_done = threading.Event()
        writer = threading.Thread(
            target=self._write_loop, args=(writer_done,), name="ingest-write", daemon=True
        )
        tracker_thread.start()
        writer.start()
        for camera in self.cameras:
            if camera.source is not None:
                camera.reader = threading.Thread(
                    target=_read_frames,
                    args=(camera, camera.source, self.stop, self.ready, max_frames),
                    name=f"read-{camera.cfg.id}",
                    daemon=True,
                )
                camera.reader.start()
        try:
            self._detection_loop()
        finally:
            self._shutdown(tracker_thread, writer, writer_done)
        return {c.cfg.id: c.stats for c in self.cameras}

    def _detection_loop(self) -> None:
        while not self.stop.is_set():
            batch = self._next_batch()
            if batch:
                self.tracked.put((batch, self._detect(batch)))
            elif all(c.done for c in self.cameras) and not any(c.frames.qsize() for c in self.cameras):
                break
            else:
                self.ready.wait(0.1)
            if time.monotonic() - self._last_tick >= self.cfg.ingest.status_interval_s:
                self.report()

    def _shutdown(
        self, tracker_thread: threading.Thread, writer: threading.Thread, writer_done: threading.Event
    ) -> None:
        for camera in self.cameras:
            if camera.source is not None:
                camera.source.close()
        self.tracked.put(None)
        tracker_thread.join()
        writer_done.set()
        writer.join()
        self.pool.flush(timeout_s=self.cfg.ingest.flush_timeout_s)
        if lost := self.pool.drop_queued():
            log.error(
                "ingest: Redis did not take %d crops before the stop; counted as dropped (%s)",
                lost,
                self.pool.stats.last_error,
            )
        for camera in self.cameras:
            if camera.reader is not None:
                camera.reader.join(timeout=5)
            camera.discard_queued()
        self.report()

    # ------------------------------------------------------------------ reporting
    def pool_stats(self) -> PoolStats:
        s = self.pool.stats
        return PoolStats(s.queued, s.written, s.dropped, s.connected, s.last_error)

    def report(self) -> None:
        """Refresh every camera's stats, then publish status, metrics and the callback."""
        now = time.monotonic()
        dt, self._last_tick = now - self._last_tick, now
        pool = self.pool.stats
        for camera in self.cameras:
            camera.refresh(dt)
            camera.stats.written = pool.written_by_camera.get(camera.cfg.id, 0)
            camera.stats.crop_drops = pool.dropped_by_camera.get(camera.cfg.id, 0)
        stats = {c.cfg.id: c.stats for c in self.cameras}
        pool_stats = self.pool_stats()
        for cam_id, s in stats.items():
            self.metrics.update({**s.as_dict(), **_source_problems(s.source_counters)}, camera=cam_id)
        self.pool_metrics.update({"queued": pool_stats.queued, "redis_up": pool_stats.connected})
        try:
            fields: dict[str, Any] = {cam_id: s.as_dict() for cam_id, s in stats.items()}
            failed = [
                f"{cam_id}: {s.last_error}" for cam_id, s in stats.items() if s.state == SourceState.FAILED
            ]
            state = "error" if stats and len(failed) == len(stats) else "degraded" if failed else "running"
            status: dict[str, Any] = {"state": state, "error": "; ".join(failed), "cameras": fields}
            status |= {"pool": asdict(pool_stats), "metrics_port": self.metrics_port}
            publish_status(self.client, self.cfg.pool.prefix, "ingest", status, replica_instance())
            for camera in self.cameras:  # so that search and the report show positions in the recording
                if (origin := camera.unrecorded_origin()) is not None:
                    record_media_origin(self.client, self.cfg.pool.prefix, camera.cfg.id, origin)
                    camera.recorded_origin = origin
        except (redis.RedisError, OSError):
            pass  # Redis down: the pool already counts and reports it
        if self.on_status is not None:
            self.on_status(stats, pool_stats)


def _serve_metrics(port: int | None, ingest: _Ingest) -> MetricsServer | None:
    """The Prometheus endpoint; a port already in use costs the metrics, never the ingest."""
    if port is None:
        return None
    try:
        server = start_metrics_server(port, ingest.metrics, ingest.pool_metrics)
    except OSError as exc:
        log.warning("ingest: cannot serve Prometheus metrics on port %d (%s); metrics are off", port, exc)
        return None
    ingest.metrics_port = server.port
    log.info("ingest: Prometheus metrics on :%d/metrics", server.port)
    return server


def run_ingest(
    cfg: AppConfig,
    redis_url: str,
    stop: StopFlag,
    max_frames: int | None = None,
    on_status: StatusCallback | None = None,
    on_frame: FrameCallback | None = None,
) -> dict[str, CameraStats]:
    """Run the detection stage until every camera ends, ``stop`` is set, or ``max_frames`` per camera.

    Returns each camera's final counters after the pool's queue has been flushed (for up to
    ``cfg.ingest.flush_timeout_s`` when Redis is down). Prometheus metrics are served on
    ``cfg.ingest.metrics_port`` (``None``: off). ``on_status`` gets every status report,
    ``on_frame`` every tracked frame.
    Raises :class:`~selfreid.plugins.registry.PluginError` when the detector or pool cannot be built, and
    ``redis.AuthenticationError`` when Redis refuses the password (a Redis that is down is waited for).

    Example:
        >>> cfg = load_config("configs/vtest_two_cameras.yaml")  # doctest: +SKIP
        >>> stats = run_ingest(cfg, "redis://localhost:6379/0", threading.Event())  # doctest: +SKIP
    """
    client = redis_client(redis_url)
    server: MetricsServer | None = None
    try:
        check_credentials(client)
        with claim_cameras(cfg, client, stop) as cameras:  # replicas split the cameras (camera_assignment)
            ingest = _Ingest(with_cameras(cfg, cameras), client, stop, on_status, on_frame)
            server = _serve_metrics(cfg.ingest.metrics_port, ingest)
            return ingest.run(max_frames)
    finally:
        if server is not None:
            server.close()
        client.close()
