"""Redis persistence of the cross-camera gallery: tracklets, global ids, thumbnails, events.

Layout (``P`` = the site prefix):

* ``P:match:next_gid``: counter behind every global id (``INCR``), so ids are never reused;
* ``P:match:gid``: hash tracklet key -> global id, independent of the model version (a
  tracklet keeps its identity across a model swap);
* ``P:match:segments``: hash ``"camera|track"`` -> JSON ``{"key", "last_ts"}``, the open
  tracklet of each tracker id (a tracker id reused after a long gap opens a new tracklet);
* ``P:match:versions``: hash model version -> JSON ``{"first_seen", "dim"}``; ``P:match:retired``: set of
  versions whose gallery was dropped;
* ``P:match:v:{version}``: hash tracklet key -> JSON :class:`TrackletRecord` (the weighted
  feature sum as base64 float32, counts, time span, global id); one hash per model version, so
  features of two versions never meet;
* ``P:match:thumbs``: hash tracklet key -> JPEG of the tracklet's latest crop;
* ``P:events``: the matcher's event stream (``new_identity``, ``matched_across_cameras``, ...);
* ``P:match:epoch``: a counter bumped when gallery data was deleted behind a running matcher's back
  (``selfreid forget``, a backfill): the match service then reloads its galleries from Redis;
* ``P:match:applied``: the id of the last ``P:embeddings`` entry whose update is in the gallery, written
  in the same transaction as that update (:meth:`GalleryStore.applying`): after a crash between the
  gallery update and the acknowledgement, the re-delivered entries up to it are acknowledged, not
  counted twice (:meth:`GalleryStore.is_applied`).

Tracklet keys are ``"camera|track|start_ms"``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import redis
from redis.typing import EncodableT, FieldT

from selfreid.plugins import streams
from selfreid.plugins.codec import as_text

__all__ = ["TrackletRecord", "GalleryStore", "tracklet_key", "parse_tracklet_key"]


def tracklet_key(camera_id: str, track_id: int, start: float) -> str:
    return f"{camera_id}|{track_id}|{int(round(start * 1000))}"


def parse_tracklet_key(key: str) -> tuple[str, int, float]:
    """``"cam1|7|1717171717171"`` -> ``("cam1", 7, 1717171717.171)`` (camera, track id, start in seconds)."""
    rest, _, start_ms = key.rpartition("|")
    camera_id, _, track = rest.rpartition("|")
    return camera_id, int(track), int(start_ms) / 1000


@dataclass
class TrackletRecord:
    """One tracklet of one camera in one model version's gallery."""

    key: str
    camera_id: str
    track_id: int
    start: float
    end: float
    count: int
    weight: float
    feature_sum: np.ndarray
    global_id: int | None = None

    @property
    def feature(self) -> np.ndarray:
        """The aggregated tracklet feature: the (weighted) mean direction, unit norm."""
        return self.feature_sum / max(float(np.linalg.norm(self.feature_sum)), 1e-12)

    def to_json(self) -> str:
        data = asdict(self)
        data["feature_sum"] = base64.b64encode(self.feature_sum.astype(np.float32).tobytes()).decode()
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> TrackletRecord:
        data = json.loads(raw)
        data["feature_sum"] = np.frombuffer(base64.b64decode(data["feature_sum"]), np.float32).copy()
        return cls(**data)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class _Deferred:
    """A Redis client whose writes are queued on one transaction while its reads go straight to Redis
    (and so do not see the queued writes). ``pipeline()`` hands out the same transaction."""

    WRITES = frozenset({"hset", "hsetnx", "hdel", "xadd", "sadd", "srem", "delete", "set"})

    def __init__(self, client: redis.Redis, tx: redis.client.Pipeline) -> None:
        self._client, self._tx = client, tx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx if name in self.WRITES else self._client, name)

    def pipeline(self, transaction: bool = True) -> _Queued:
        return _Queued(self._tx)


class _Queued:
    """The shared transaction seen as a pipeline of its own: ``execute()`` leaves it to the owner."""

    def __init__(self, tx: redis.client.Pipeline) -> None:
        self._tx = tx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def execute(self) -> list[Any]:
        return []


class GalleryStore:
    """Reads and writes the layout in the module docstring."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, "match", *parts))

    @property
    def events_key(self) -> str:
        return f"{self.prefix}:events"

    # -- exactly-once application of the embeddings stream ---------------------------------------
    @contextmanager
    def applying(self, entry_id: str) -> Iterator[None]:
        """Queue every write made through this store inside the block on one MULTI/EXEC transaction,
        together with ``entry_id`` as the last applied embeddings entry; it commits when the block ends,
        and nothing is written when the block raises. Reads inside still go to Redis (they do not see
        the queued writes), and new global ids are drawn at once (a crash only skips an id).

        Example (the match service)::

            with matcher.store.applying(items[-1].entry_id):
                matcher.update([i.embedding for i in items])
            store.ack(GROUP, [i.entry_id for i in items])
        """
        real = self.client
        tx = real.pipeline(transaction=True)
        self.client = _Deferred(real, tx)  # type: ignore[assignment]
        try:
            yield
        finally:
            self.client = real
        tx.set(self.key("applied"), entry_id)
        tx.execute()

    def last_applied(self) -> str | None:
        """The id of the last embeddings entry whose update the gallery holds (``None``: none yet)."""
        value = self.client.get(self.key("applied"))
        return as_text(value) if value is not None else None

    def is_applied(self, entry_id: str) -> bool:
        """The gallery already holds the update of this embeddings entry (ids grow with the stream)."""
        last = self.last_applied()
        return last is not None and _id_key(entry_id) <= _id_key(last)

    # -- identities --------------------------------------------------------------------------
    def next_global_id(self) -> int:
        return int(self.client.incr(self.key("next_gid")))

    def global_id_of(self, tracklet: str) -> int | None:
        value = self.client.hget(self.key("gid"), tracklet)
        return int(value) if value is not None else None

    # -- versions and tracklets ----------------------------------------------------------------
    def versions(self) -> dict[str, dict[str, Any]]:
        """Known model versions, oldest first."""
        raw = {as_text(k): json.loads(v) for k, v in self.client.hgetall(self.key("versions")).items()}
        return dict(sorted(raw.items(), key=lambda kv: kv[1]["first_seen"]))

    def register_version(self, version: str, dim: int) -> None:
        record = json.dumps({"first_seen": time.time(), "dim": dim})
        self.client.hsetnx(self.key("versions"), version, record)

    def load_tracklets(self, version: str) -> list[TrackletRecord]:
        return [TrackletRecord.from_json(v) for v in self.client.hgetall(self.key("v", version)).values()]

    def save_tracklets(self, version: str, records: list[TrackletRecord]) -> None:
        if not records:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key("v", version), mapping={r.key: r.to_json() for r in records})
        gids: dict[FieldT, EncodableT] = {r.key: r.global_id for r in records if r.global_id is not None}
        if gids:
            pipe.hset(self.key("gid"), mapping=gids)
        pipe.execute()

    def delete_tracklets(self, version: str, keys: list[str], everywhere: bool) -> None:
        """Drop tracklets from one version's gallery; ``everywhere`` also forgets their ids and thumbnails."""
        if not keys:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(self.key("v", version), *keys)
        if everywhere:
            pipe.hdel(self.key("gid"), *keys)
            pipe.hdel(self.key("thumbs"), *keys)
        pipe.execute()

    def drop_version(self, version: str) -> None:
        """Delete a version's gallery for good; it is remembered as retired."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.key("v", version))
        pipe.hdel(self.key("versions"), version)
        pipe.sadd(self.key("retired"), version)
        pipe.execute()

    def retired_versions(self) -> set[str]:
        return {as_text(v) for v in self.client.smembers(self.key("retired"))}

    # -- privacy: retention and erasure ------------------------------------------------------------
    def tracklet_keys(self) -> set[str]:
        """Every tracklet key that any kept gallery holds."""
        pipe = self.client.pipeline(transaction=False)
        for version in self.versions():
            pipe.hkeys(self.key("v", version))
        return {as_text(k) for keys in pipe.execute() for k in keys}

    def global_ids(self) -> dict[str, int]:
        """Tracklet key -> global id, for every tracklet that was ever decided and not deleted."""
        return {as_text(k): int(v) for k, v in self.client.hgetall(self.key("gid")).items()}

    def expire_orphans(self, before: float) -> int:
        """Delete the ids and thumbnails of tracklets no gallery holds any more (their model version was
        dropped) that started before ``before`` (seconds); returns how many thumbnails went."""
        live = self.tracklet_keys()
        keys = {as_text(k) for k in self.client.hkeys(self.key("thumbs"))} | set(self.global_ids())
        stale = [k for k in keys if k not in live and parse_tracklet_key(k)[2] < before]
        return self._forget_keys(stale)[1] if stale else 0

    def forget(self, keys: Iterable[str]) -> tuple[int, int]:
        """Delete these tracklets from every gallery, with their ids, thumbnails and open segments, and bump
        the epoch so a running matcher reloads; returns (gallery records, thumbnails) deleted."""
        keys = sorted(set(keys))
        if not keys:
            return 0, 0
        open_segments = [name for name, seg in self.load_segments().items() if seg["key"] in keys]
        pipe = self.client.pipeline(transaction=False)
        for version in self.versions():
            pipe.hdel(self.key("v", version), *keys)
        records = sum(pipe.execute())
        _, thumbs = self._forget_keys(keys)
        self.delete_segments(open_segments)
        self.client.incr(self.key("epoch"))
        return int(records), thumbs

    def _forget_keys(self, keys: list[str]) -> tuple[int, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(self.key("gid"), *keys)
        pipe.hdel(self.key("thumbs"), *keys)
        ids, thumbs = pipe.execute()
        return int(ids), int(thumbs)

    def epoch(self) -> int:
        """Changes whenever :meth:`forget` deleted gallery data."""
        return int(self.client.get(self.key("epoch")) or 0)

    # -- open tracklet per tracker id -------------------------------------------------------------
    def load_segments(self) -> dict[str, dict[str, Any]]:
        return {as_text(k): json.loads(v) for k, v in self.client.hgetall(self.key("segments")).items()}

    def save_segments(self, segments: dict[str, dict[str, Any]]) -> None:
        if segments:
            self.client.hset(self.key("segments"), mapping={k: json.dumps(v) for k, v in segments.items()})

    def delete_segments(self, names: list[str]) -> None:
        if names:
            self.client.hdel(self.key("segments"), *names)

    # -- thumbnails and events -------------------------------------------------------------------
    def save_thumbnails(self, jpegs: dict[str, bytes]) -> None:
        if jpegs:
            # redis' stubs refuse dict[str, bytes]: they take a Mapping, whose key type is invariant
            self.client.hset(self.key("thumbs"), mapping=jpegs)  # type: ignore[arg-type]

    def thumbnails(self, keys: list[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        values = self.client.hmget(self.key("thumbs"), keys)
        return {k: v for k, v in zip(keys, values) if isinstance(v, bytes)}

    def emit(self, events: list[dict[str, Any]], maxlen: int) -> None:
        if not events:
            return
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            fields: dict[FieldT, EncodableT] = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in event.items()}
            pipe.xadd(self.events_key, fields, maxlen=maxlen, approximate=True)
        pipe.execute()

    def expire_events(self, max_age_s: float, now_ms: int | None = None) -> int:
        """Delete events older than ``max_age_s`` (server clock); returns how many."""
        return streams.expire(self.client, self.events_key, max_age_s, now_ms)

    def erase_events(self, select: Callable[[dict[str, str]], bool]) -> int:
        """Delete the events ``select`` picks (fields as text); returns how many."""
        return streams.erase(self.client, self.events_key,
                             lambda _, fields: select({as_text(k): as_text(v) for k, v in fields.items()}))

    def read_events(self, count: int = 100) -> list[dict[str, str]]:
        """The newest ``count`` events, oldest first (for reports and tests)."""
        # an XREVRANGE reply (redis' stubs also allow None ids and fields: only XCLAIM replies have them)
        entries = cast(list[tuple[bytes, streams.Fields]], self.client.xrevrange(self.events_key, count=count))
        return [{as_text(k): as_text(v) for k, v in fields.items()} for _, fields in reversed(entries)]
