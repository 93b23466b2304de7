"""The unlabelled crop pool on Redis Streams: one stream per camera.

Layout (``P`` = the site prefix, ``cfg.pool.prefix``):

* ``P:pool:{camera_id}``: a stream per camera; each entry holds the JPEG and its metadata
  (``cam``, ``ts``, ``frame``, ``box`` = ``"x1,y1,x2,y2"``, ``track``, ``conf``, ``jpeg``);
* ``P:cameras``: the set of camera ids that have a pool stream.

On a Redis Cluster ``P`` must be a hash tag (``{site1}``), so that the streams, their consumer
groups and the multi-stream reads share one slot (see :mod:`selfreid.plugins.streams`).

Why one stream per camera rather than one stream with a camera field:

* **retention per camera**: ``MAXLEN``/``MINID`` trimming applies per stream, so a busy
  entrance camera cannot evict a quiet corridor camera's crops;
* **camera-balanced snapshots**: the trainer's snapshot reads the newest entries of each
  camera with one ``XREVRANGE`` per camera instead of scanning a mixed stream;
* the cost, consumer groups on N streams, is small: groups are created on demand on every
  camera stream (``XGROUP CREATE ... MKSTREAM``) and one ``XREADGROUP`` reads all N streams
  in one round trip. Sites have tens of cameras, not thousands.

Crop ids are ``"{camera_id}/{stream_id}"`` (e.g. ``"cam1/1717171717171-0"``): stream ids are
unique within a stream and camera ids cannot contain ``/``, so ids are unique across cameras
and each one names the stream to ``XACK``.

Writes are pipelined (one round trip per batch of ``batch_size`` crops). They go through a
bounded local queue: when Redis is slow or down the queue fills, then the oldest crops are
dropped and counted (per camera) - memory never grows without bound and nothing raises;
the next ``add``/``flush`` after Redis comes back writes the backlog, with a growing wait
between attempts while it stays down. Delivery is at-least-once: a batch whose reply was
lost with the connection is written again.

**Retention is the privacy retention.** ``max_age_hours`` bounds how long a person's crops are kept:
each write trims its camera's stream, and :meth:`RedisStreamPool.expire` (run by the matcher service
every ``matcher.prune_every_s``, with the embeddings, gallery and events derived from the crops)
deletes old entries of every camera, including cameras that stopped sending. :meth:`RedisStreamPool.erase`
deletes chosen crops (``selfreid forget``).

Readers use consumer groups (``embedder``, ``trainer``, ...) that progress independently.
Entries read but not acknowledged by a consumer that died are claimed by the next reader
of the same group once idle for ``claim_idle_ms`` (``XAUTOCLAIM``); entries trimmed away
by retention before their group acknowledged them are acknowledged out of the pending list.
An entry another writer stored without a field, or with one that does not parse, is logged
and skipped (acknowledged for the reading group, left in the stream), never delivered again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import redis
from pydantic import BaseModel, ConfigDict, Field
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

from selfreid.plugins import streams
from selfreid.plugins.codec import as_text
from selfreid.plugins.contracts import Crop

__all__ = ["RedisStreamPool", "PoolWriteStats", "parse_crop_id"]

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.RedisError, OSError)
WRITE_PROBLEMS = {  # why a write failed, as the log says it
    "full": "Redis is full (maxmemory reached: raise maxmemory, or lower pool.params.max_len_per_camera)",
    "unavailable": "Redis unavailable",
}


def parse_crop_id(crop_id: str) -> tuple[str, str]:
    """``"cam1/1717-0"`` -> ``("cam1", "1717-0")``."""
    camera_id, sep, stream_id = crop_id.partition("/")
    if not sep or not camera_id or not stream_id:
        raise ValueError(f"not a pool crop id: {crop_id!r} (expected 'camera_id/stream_id')")
    return camera_id, stream_id


def _stream_ms(stream_id: bytes | str) -> int:
    return int(as_text(stream_id).split("-", 1)[0])


@dataclass
class PoolWriteStats:
    """Counters of the write path (read by the ingest status and metrics)."""

    written: int = 0
    dropped: int = 0
    write_errors: int = 0
    queued: int = 0
    connected: bool = True
    last_error: str = ""
    dropped_by_camera: Counter = field(default_factory=Counter)
    written_by_camera: Counter = field(default_factory=Counter)


class RedisStreamPool:
    """:class:`~selfreid.plugins.contracts.PoolStore` on Redis Streams (see the module docstring).

    Example:
        >>> settings = RedisStreamPool.Settings(max_age_hours=24)
        >>> pool = RedisStreamPool(settings, client=redis.Redis(), prefix="site")  # doctest: +SKIP
        >>> ids = pool.add(crops)                                   # doctest: +SKIP
        >>> batch = pool.read("embedder", "worker-1", count=32, block_ms=500)  # doctest: +SKIP
        >>> pool.ack("embedder", [c.crop_id for c in batch])        # doctest: +SKIP
    """

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        max_len_per_camera: int = Field(
            200_000, ge=1, description="Entries kept per camera stream (XTRIM MAXLEN); bounds Redis memory."
        )
        max_age_hours: float | None = Field(
            72.0,
            gt=0,
            description="Privacy retention: crops older than this are deleted (XTRIM MINID), and so are the "
            "embeddings, gallery tracklets, thumbnails and events derived from them; None = no age limit.",
        )
        exact_trim: bool = Field(
            False,
            description="Trim to the exact bounds. Default: approximate (~), which trims whole stream nodes "
            "(up to stream-node-max-entries, 100, extra entries) at a fraction of the CPU cost.",
        )
        batch_size: int = Field(256, ge=1, description="Crops per pipelined round trip.")
        max_queue: int = Field(
            5000,
            ge=1,
            description="Crops held locally while Redis is slow or down; beyond it the oldest are dropped.",
        )
        retry_s: float = Field(
            0.5, gt=0, description="First wait before retrying a down Redis; doubles up to 16x."
        )
        claim_idle_ms: int = Field(
            60_000,
            ge=1,
            description="A pending entry idle this long (its consumer died) is redelivered to another.",
        )

    def __init__(
        self, settings: Settings | None = None, *, client: redis.Redis, prefix: str = "selfreid"
    ) -> None:
        if client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("the crop pool needs a Redis client with decode_responses=False (JPEG bytes)")
        streams.require_hash_tag(client, prefix)
        self.settings = settings or self.Settings()
        self.client = client
        self.prefix = prefix
        self.stats = PoolWriteStats()
        self._queue: deque[Crop] = deque()
        self._queue_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._retry_at = 0.0
        self._backoff = self.settings.retry_s
        self._write_problem: str | None = None  # "full" | "unavailable" while writes fail (logged once per change)
        self._last_ms: dict[str, int] = {}
        self._groups_ready: dict[str, set[str]] = {}
        self._carry: dict[tuple[str, str], deque[Crop]] = {}
        self._next_claim: dict[str, float] = {}

    # ------------------------------------------------------------------ keys
    def stream_key(self, camera_id: str) -> str:
        return f"{self.prefix}:pool:{camera_id}"

    @property
    def cameras_key(self) -> str:
        return f"{self.prefix}:cameras"

    def cameras(self) -> list[str]:
        """Camera ids that have a pool stream, sorted."""
        return sorted(as_text(c) for c in self.client.smembers(self.cameras_key))

    # ------------------------------------------------------------------ retention and erasure
    @property
    def retention_s(self) -> float | None:
        """Seconds a crop is kept (``max_age_hours``); ``None`` = until ``max_len_per_camera`` pushes it out."""
        hours = self.settings.max_age_hours
        return None if hours is None else hours * 3600

    def expire(self) -> int:
        """Delete crops older than :attr:`retention_s` (server clock) from every camera; returns how many."""
        if self.retention_s is None:
            return 0
        now_ms = streams.server_ms(self.client)
        return sum(streams.expire(self.client, self.stream_key(cam), self.retention_s, now_ms) for cam in self.cameras())

    def erase(self, camera_id: str, select: Callable[[Crop], bool]) -> int:
        """Delete the crops of ``camera_id`` for which ``select`` is true; returns how many."""

        def picked(sid: bytes, fields: dict[bytes, bytes]) -> bool:
            try:
                return select(_crop(camera_id, sid, fields))
            except (KeyError, ValueError, TypeError):  # a malformed entry is nobody's crop
                return False

        return streams.erase(self.client, self.stream_key(camera_id), picked)

    # ------------------------------------------------------------------ writing
    def enqueue(self, crops: Iterable[Crop]) -> None:
        """Queue crops for the next :meth:`flush` (thread-safe, never blocks, drops the oldest when full)."""
        with self._queue_lock:
            self._queue.extend(crops)
            self._drop_overflow()

    def _drop_overflow(self) -> None:
        while len(self._queue) > self.settings.max_queue:
            lost = self._queue.popleft()
            self.stats.dropped += 1
            self.stats.dropped_by_camera[lost.camera_id] += 1
        self.stats.queued = len(self._queue)

    def drop_queued(self) -> int:
        """Give up on every queued crop (counted as dropped), e.g. when stopping while Redis is down."""
        with self._queue_lock:
            lost = len(self._queue)
            self.stats.dropped += lost
            self.stats.dropped_by_camera.update(c.camera_id for c in self._queue)
            self._queue.clear()
            self.stats.queued = 0
        return lost

    def flush(self, timeout_s: float = 0.0) -> list[tuple[Crop, str]]:
        """Write queued crops in pipelined batches; return ``(crop, crop_id)`` of those written.

        With ``timeout_s == 0`` one pass is made (skipped while backing off from a failure);
        otherwise attempts repeat until the queue is empty or ``timeout_s`` has passed.
        Redis errors are counted in :attr:`stats`, never raised.
        """
        deadline = time.monotonic() + timeout_s
        written: list[tuple[Crop, str]] = []
        with self._write_lock:
            while True:
                wait = self._retry_at - time.monotonic()
                if wait <= 0 and self._write_queued(written):
                    return written
                if time.monotonic() + max(wait, 0.0) >= deadline:
                    return written
                time.sleep(min(max(wait, 0.01), max(deadline - time.monotonic(), 0.0)))

    def _write_queued(self, written: list[tuple[Crop, str]]) -> bool:
        """Drain the queue batch by batch; ``False`` when Redis failed (the batch is re-queued)."""
        while True:
            with self._queue_lock:
                batch = [
                    self._queue.popleft() for _ in range(min(self.settings.batch_size, len(self._queue)))
                ]
                self.stats.queued = len(self._queue)
            if not batch:
                return True
            try:
                ids = self._write(batch)
            except redis.DataError as exc:  # a crop Redis cannot encode: retrying would never succeed
                self._discard(batch, exc)
                continue
            except REDIS_ERRORS as exc:
                self._requeue(batch, exc)
                return False
            self._backoff = self.settings.retry_s
            self._write_problem = None
            self.stats.connected = True
            self.stats.written += len(batch)
            self.stats.written_by_camera.update(c.camera_id for c in batch)
            written.extend(zip(batch, ids))

    def _discard(self, batch: list[Crop], exc: BaseException) -> None:
        log.error("pool: dropped a batch of %d crops that cannot be stored: %s", len(batch), exc)
        self.stats.dropped += len(batch)
        self.stats.dropped_by_camera.update(c.camera_id for c in batch)
        self.stats.last_error = str(exc)

    def _requeue(self, batch: list[Crop], exc: BaseException) -> None:
        with self._queue_lock:
            self._queue.extendleft(reversed(batch))
            self._drop_overflow()
        # A full Redis (maxmemory with noeviction) answers, but refuses every write until memory is freed.
        problem = "full" if isinstance(exc, redis.exceptions.OutOfMemoryError) else "unavailable"
        if problem != self._write_problem:
            cause = WRITE_PROBLEMS[problem]
            log.warning("pool: %s (%s); holding up to %d crops locally", cause, exc, self.settings.max_queue)
        self._write_problem = problem
        self.stats.connected = problem == "full"
        self.stats.write_errors += 1
        self.stats.last_error = str(exc) or type(exc).__name__
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.settings.retry_s * 16)

    def _write(self, batch: Sequence[Crop]) -> list[str]:
        """One round trip: the XADDs, the camera set, then each touched stream's retention trims."""
        pipe = self.client.pipeline(transaction=False)
        for crop in batch:
            pipe.xadd(self.stream_key(crop.camera_id), _fields(crop))
        cams = sorted({c.camera_id for c in batch})
        pipe.sadd(self.cameras_key, *cams)
        for cam in cams:
            self._trim(pipe, cam)
        replies = pipe.execute()
        ids = [as_text(r) for r in replies[: len(batch)]]
        for crop, sid in zip(batch, ids):
            self._last_ms[crop.camera_id] = _stream_ms(sid)
        return [f"{crop.camera_id}/{sid}" for crop, sid in zip(batch, ids)]

    def _trim(self, pipe: redis.client.Pipeline, camera_id: str) -> None:
        """Retention, once per batch and camera (cheaper than MAXLEN on every XADD; the bound
        is exceeded by at most one batch between trims)."""
        s, key, approximate = self.settings, self.stream_key(camera_id), not self.settings.exact_trim
        pipe.xtrim(key, maxlen=s.max_len_per_camera, approximate=approximate)
        if s.max_age_hours is not None and camera_id in self._last_ms:
            # the newest id this process wrote there is the server's clock: no client clock skew
            minid = self._last_ms[camera_id] - int(s.max_age_hours * 3_600_000)
            pipe.xtrim(key, minid=f"{minid}", approximate=approximate)

    def add(self, crops: Sequence[Crop]) -> list[str]:
        """Store crops; return the ids of those that reached Redis, in order.

        While Redis is unavailable the crops wait in the local queue (and are written by a later
        ``add``/``flush``), so the returned list is shorter than ``crops``; it never raises.
        """
        self.enqueue(crops)
        ids = {id(crop): cid for crop, cid in self.flush()}
        return [ids[id(c)] for c in crops if id(c) in ids]

    # ------------------------------------------------------------------ reading
    def _ensure_groups(self, group: str) -> list[str]:
        cams = self.cameras()
        ready = self._groups_ready.setdefault(group, set())
        for cam in cams:
            if cam in ready:
                continue
            try:
                self.client.xgroup_create(self.stream_key(cam), group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            ready.add(cam)
        return cams

    def read(self, group: str, consumer: str, count: int, block_ms: int = 0) -> list[Crop]:
        """Up to ``count`` crops for ``consumer`` of ``group``: first entries abandoned by a dead
        consumer (idle > ``claim_idle_ms``), then new ones. ``block_ms`` <= 0 does not wait.
        Redis errors propagate (the calling service decides how to back off)."""
        carry = self._carry.setdefault((group, consumer), deque())
        if not carry:
            cams = self._ensure_groups(group)
            if not cams:
                time.sleep(max(block_ms, 0) / 1000)
                return []
            carry.extend(self._claim(group, consumer, cams, count))
            if not carry:
                carry.extend(self._read_new(group, consumer, cams, count, block_ms))
        return [carry.popleft() for _ in range(min(count, len(carry)))]

    def _read_new(self, group: str, consumer: str, cams: list[str], count: int, block_ms: int) -> list[Crop]:
        streams: dict[KeyT, StreamIdT] = {self.stream_key(c): ">" for c in cams}
        try:
            reply = self.client.xreadgroup(
                group, consumer, streams, count=count, block=block_ms if block_ms > 0 else None
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # a stream was deleted and re-created: create the groups again
                self._groups_ready.pop(group, None)
                return []
            raise
        crops = []
        for key, entries in cast(list[tuple[bytes, list]], reply or []):  # XREADGROUP: [(stream, entries)]
            cam = as_text(key).removeprefix(f"{self.prefix}:pool:")
            crops.extend(self.parse_entries(cam, entries, group))
        return crops

    def parse_entries(self, camera_id: str, entries: list, group: str | None = None) -> list[Crop]:
        """The crops of ``entries`` (``(id, fields)`` pairs of an XRANGE or XREADGROUP reply on ``camera_id``'s
        stream), for readers of the streams beside the consumer groups (the backfill); malformed entries
        are logged, skipped and acknowledged for ``group``."""
        crops, bad = [], []
        for sid, fields in entries:
            try:
                crops.append(_crop(camera_id, sid, fields))
            except (ValueError, TypeError) as exc:
                bad.append(f"{camera_id}/{as_text(sid)}")
                log.error("pool: skipped malformed entry %s of %s: %s", bad[-1], self.stream_key(camera_id), exc)
        if bad and group:
            self.ack(group, bad)
        return crops

    def _claim(self, group: str, consumer: str, cams: list[str], count: int) -> list[Crop]:
        """Take over entries pending longer than ``claim_idle_ms`` (checked every half of it)."""
        now = time.monotonic()
        if now < self._next_claim.get(group, 0.0):
            return []
        self._next_claim[group] = now + self.settings.claim_idle_ms / 2000
        pipe = self.client.pipeline(transaction=False)
        for cam in cams:
            pipe.xautoclaim(
                self.stream_key(cam), group, consumer, self.settings.claim_idle_ms, count=count, justid=True
            )
        claimed = [
            (cam, [as_text(i) for i in ids]) for cam, ids in zip(cams, pipe.execute()) if ids
        ]  # justid: id lists
        if not claimed:
            return []
        pipe = self.client.pipeline(transaction=False)
        for cam, ids in claimed:
            for sid in ids:
                pipe.xrange(self.stream_key(cam), sid, sid)
        replies = iter(pipe.execute())
        crops, gone = [], []
        for cam, ids in claimed:
            for sid in ids:
                entries = next(replies)
                if entries:
                    crops.extend(self.parse_entries(cam, entries, group))
                else:  # trimmed by retention before anyone acknowledged it
                    gone.append(f"{cam}/{sid}")
        if gone:
            self.ack(group, gone)
        log.info("pool: %s/%s took over %d pending crops of a dead consumer", group, consumer, len(crops))
        return crops

    def ack(self, group: str, crop_ids: Sequence[str], pipe: redis.client.Pipeline | None = None) -> int:
        """Acknowledge crops for ``group``; returns how many were pending.

        With ``pipe`` the acknowledgements are only queued on it, and 0 is returned: the caller
        executes them in one transaction with the writes that make them true (the embedder's
        embeddings), so that a crash leaves both or neither.
        """
        by_cam: dict[str, list[str]] = {}
        for cid in crop_ids:
            cam, sid = parse_crop_id(cid)
            by_cam.setdefault(cam, []).append(sid)
        if not by_cam:
            return 0
        queue = self.client.pipeline(transaction=False) if pipe is None else pipe
        for cam, sids in by_cam.items():
            queue.xack(self.stream_key(cam), group, *sids)
        return int(sum(queue.execute())) if pipe is None else 0

    def pending(self, group: str) -> int:
        """Entries delivered to ``group`` and not yet acknowledged, over every camera."""
        cams = self.cameras()
        if not cams:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for cam in cams:
            pipe.xpending(self.stream_key(cam), group)
        total = 0
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, redis.ResponseError):
                if "NOGROUP" in str(reply):
                    continue
                raise reply
            total += int(reply["pending"])
        return total

    # ------------------------------------------------------------------ inspection
    def count_by_camera(self) -> dict[str, int]:
        cams = self.cameras()
        pipe = self.client.pipeline(transaction=False)
        for cam in cams:
            pipe.xlen(self.stream_key(cam))
        return dict(zip(cams, (int(n) for n in pipe.execute()))) if cams else {}

    def count(self) -> int:
        """Crops currently kept in the pool (all cameras)."""
        return sum(self.count_by_camera().values())

    def snapshot(self, max_crops: int, since_s: float | None = None) -> list[Crop]:
        """Up to ``max_crops`` of the newest crops, balanced over cameras: round-robin over cameras,
        newest first within each, only from the last ``since_s`` seconds (server clock).

        A camera with fewer crops than its share leaves the rest to the others. Reads in rounds
        of per-camera quotas, so no more than ``max_crops`` entries are fetched in total.
        """
        cams = self.cameras()
        if not cams or max_crops <= 0:
            return []
        low = "-"
        if since_s is not None:
            sec, usec = self.client.time()
            low = str(max(int(sec * 1000 + usec // 1000 - since_s * 1000), 0))
        got: dict[str, list[Crop]] = {c: [] for c in cams}
        cursor: dict[str, str] = {c: "+" for c in cams}
        active = list(cams)
        while active and sum(map(len, got.values())) < max_crops:
            quota = math.ceil((max_crops - sum(map(len, got.values()))) / len(active))
            pipe = self.client.pipeline(transaction=False)
            for cam in active:
                pipe.xrevrange(self.stream_key(cam), cursor[cam], low, count=quota)
            for cam, entries in zip(list(active), pipe.execute()):
                got[cam].extend(self.parse_entries(cam, entries))
                if len(entries) < quota:
                    active.remove(cam)
                else:
                    cursor[cam] = f"({as_text(entries[-1][0])}"
        return _round_robin(got.values())[:max_crops]


def _round_robin(per_camera: Iterable[list[Crop]]) -> list[Crop]:
    lists = list(per_camera)
    out: list[Crop] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def _fields(crop: Crop) -> dict[FieldT, EncodableT]:
    return {
        "cam": crop.camera_id,
        "ts": repr(float(crop.timestamp)),
        "frame": int(crop.frame_index),
        "box": ",".join(f"{v:g}" for v in crop.box),
        "track": int(crop.track_id),
        "conf": f"{crop.confidence:.4f}",
        "jpeg": crop.jpeg,
    }


_FIELDS = (b"ts", b"frame", b"box", b"track", b"conf", b"jpeg")


def _crop(camera_id: str, stream_id: bytes | str, fields: dict[bytes, bytes]) -> Crop:
    """A stream entry as a crop; ValueError when a field is missing or does not parse."""
    if missing := [as_text(k) for k in _FIELDS if k not in fields]:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    box = tuple(float(v) for v in fields[b"box"].split(b","))
    if len(box) != 4:
        raise ValueError(f"box {as_text(fields[b'box'])!r} is not x1,y1,x2,y2")
    return Crop(
        camera_id=camera_id,
        timestamp=float(fields[b"ts"]),
        frame_index=int(fields[b"frame"]),
        box=box,  # type: ignore[arg-type]
        track_id=int(fields[b"track"]),
        confidence=float(fields[b"conf"]),
        jpeg=fields[b"jpeg"],
        crop_id=f"{camera_id}/{as_text(stream_id)}",
    )
