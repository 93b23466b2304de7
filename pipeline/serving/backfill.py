"""Backfill: a promoted model version's gallery, rebuilt from the retained pool crops before it serves.

Galleries never mix model versions (:mod:`selfreid.plugins.matchers.cross_camera`), so without a
backfill a promotion would start the new version's gallery empty and search would forget
everything seen before it. **Blue/green**: the registry calls :func:`backfill_hook` *before* it
writes the production pointer (``ModelRegistry(before_switch=...)``). Until the backfill returns, the
old version keeps serving (embedder, matcher, search, report, API); when it returns, the new
version's gallery already holds the past tracklets and the switch answers from it at once.

How the gallery of version ``V`` is rebuilt:

1. **Plan.** Every tracklet known to the kept galleries (any version, merged by tracklet key) gives
   the time span of one ``(camera, tracker id)``; a pool crop inside a span belongs to that
   tracklet. Crops in no span (not matched yet, rejected) are skipped, never embedded.
2. **Re-embed.** Each camera's pool stream is read newest first, in batches, with ``V``'s model.
   Only crops the live embedder has already been given (its consumer group's last delivered id) are
   taken: later ones reach ``V`` through the live path after the switch, so no crop counts twice.
3. **Re-associate.** The crops' ``V`` features are summed into ``V``'s tracklet records under the
   *same tracklet key*, with the global id the tracklet already had (``P:match:gid``): identities
   carry over by the tracker's continuity, no cross-version comparison is made.
4. **Resumable and bounded.** After each batch the records, the per-camera cursors and the counters
   are written in one transaction (``P:backfill:{V}``, a hash), so a crash redoes at most one batch
   and a new call resumes. At most ``max_crops`` crops (the newest) are re-embedded and the call
   returns after ``max_s`` even if not done; the switch then happens with a partial gallery, and the
   report and ``selfreid models list`` say how complete it is.
5. **Hand-over.** ``V`` is a registered gallery version from its first record on (so ``selfreid
   forget`` reaches it meanwhile), is un-retired if it was, and the gallery epoch is bumped at the end
   so a running matcher reloads its galleries from Redis before its next batch.

Progress is published as the ``backfill:{V}`` status report (the live table shows it) and kept in
``P:backfill:{V}``: :func:`backfill_progress` reads it, :func:`serving_statement` turns it into the
one sentence the report and ``models list`` print.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import redis
from redis.typing import EncodableT, FieldT

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.config.service import BackfillConfig
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.status import publish_status
from selfreid.pipeline.serving.embed import GROUP as LIVE_GROUP  # the live embedder's consumer group on the pool
from selfreid.pipeline.serving.embed import build_embedder, embed_with_version
from selfreid.plugins.codec import as_text, decode_jpeg
from selfreid.plugins.contracts import Crop, Embedder
from selfreid.plugins.matchers.gallery_store import GalleryStore, TrackletRecord
from selfreid.plugins.streams import Fields

if TYPE_CHECKING:
    from selfreid.pipeline.training.registry import ModelVersion

__all__ = [
    "BackfillProgress", "Backfill", "backfill_key", "backfill_progress", "run_backfill",
    "backfill_hook", "serving_statement",
]

log = logging.getLogger(__name__)

EPS_S = 1e-3  # tracklet spans are compared with millisecond slack (keys carry whole milliseconds)

Entries = list[tuple[bytes, Fields]]
"""An XRANGE / XREVRANGE reply (redis' stubs also allow None ids and fields: only XCLAIM replies have them)."""


def backfill_key(prefix: str, version: str) -> str:
    return f"{prefix}:backfill:{version}"


@dataclass
class BackfillProgress:
    """Where the backfill of one version stands (the ``P:backfill:{V}`` hash)."""

    version: str
    state: str = "running"  # running | done | partial (stopped by max_crops / max_s) | failed
    embedded: int = 0  # crops re-embedded into the version's gallery
    skipped: int = 0  # crops in no known tracklet
    planned: int = 0  # crops the live embedder had been given when the plan was made (estimate)
    tracklets: int = 0  # tracklets known before the switch (every kept gallery)
    carried: int = 0  # of those, now in the version's gallery
    started: float = 0.0
    finished: float = 0.0
    error: str = ""

    @property
    def completeness(self) -> float:
        """Share of the known tracklets the version's gallery holds (1.0 when there were none)."""
        return min(1.0, self.carried / self.tracklets) if self.tracklets else 1.0

    @property
    def crop_fraction(self) -> float:
        seen = self.embedded + self.skipped
        return min(1.0, seen / self.planned) if self.planned else 1.0

    def as_status(self) -> dict[str, Any]:
        return {"state": self.state, "version": self.version, "embedded": self.embedded, "skipped": self.skipped,
                "planned": self.planned, "tracklets": self.tracklets, "carried": self.carried,
                "done_pct": round(100 * self.crop_fraction, 1), "error": self.error}

    def describe(self) -> str:
        """``"gallery complete: 57 of 57 earlier tracklets carried over"`` and the like."""
        share = f"{self.carried} of {self.tracklets} earlier tracklets carried over"
        if not self.tracklets and self.state != "failed":
            return "no earlier tracklet to carry over"
        if self.state == "running":
            return f"gallery being rebuilt ({100 * self.crop_fraction:.0f}% of {self.planned} retained crops): {share}"
        if self.state == "failed":
            return f"gallery rebuild failed ({self.error}); it fills with new sightings: {share}"
        if self.carried >= self.tracklets:
            return f"gallery complete: {share}"
        return f"gallery {100 * self.completeness:.0f}% complete: {share} (the rest aged out of the pool or hit a limit)"


_INT_FIELDS = ("embedded", "skipped", "planned", "tracklets", "carried")
_FLOAT_FIELDS = ("started", "finished")


def backfill_progress(client: redis.Redis, prefix: str, version: str) -> BackfillProgress | None:
    """The stored progress of ``version``'s backfill, or ``None`` when it never had one."""
    raw = {as_text(k): as_text(v) for k, v in client.hgetall(backfill_key(prefix, version)).items()}
    if "state" not in raw:
        return None
    p = BackfillProgress(version, raw["state"], error=raw.get("error", ""))
    for name in _INT_FIELDS:
        setattr(p, name, int(raw.get(name, 0)))
    for name in _FLOAT_FIELDS:
        setattr(p, name, float(raw.get(name, 0.0)))
    return p


def serving_statement(client: redis.Redis, prefix: str, version: str | None) -> str:
    """One sentence for the report header and ``selfreid models list``: which version serves and how
    complete its gallery is. ``version``: the production version (``None``: no model yet)."""
    if not version:
        return "No model version serves yet."
    progress = backfill_progress(client, prefix, version)
    gallery = GalleryStore(client, prefix)
    held = int(client.hlen(gallery.key("v", version)))
    if progress is None:
        return f"Model version {version} serves; its gallery holds {held} tracklet(s)."
    return f"Model version {version} serves; {progress.describe()}; {held} tracklet(s) in its gallery now."


@dataclass
class _Span:
    key: str
    start: float
    end: float
    global_id: int | None


def _known_spans(gallery: GalleryStore, target: str) -> dict[str, _Span]:
    """Every tracklet of every kept gallery but ``target``'s, merged by key, with its global id."""
    gids = gallery.global_ids()
    spans: dict[str, _Span] = {}
    for version in gallery.versions():
        if version == target:
            continue
        for rec in gallery.load_tracklets(version):
            span = spans.get(rec.key)
            if span is None:
                spans[rec.key] = _Span(rec.key, rec.start, rec.end, gids.get(rec.key, rec.global_id))
            else:
                span.start, span.end = min(span.start, rec.start), max(span.end, rec.end)
    return spans


class _SpanIndex:
    """``(camera, track, timestamp) -> tracklet key``, by binary search over each tracker id's spans."""

    def __init__(self, spans: dict[str, _Span]) -> None:
        by_track: dict[str, list[_Span]] = defaultdict(list)
        for span in spans.values():
            camera, track, _ = span.key.rsplit("|", 2)
            by_track[f"{camera}|{track}"].append(span)
        self._spans = {k: sorted(v, key=lambda s: s.start) for k, v in by_track.items()}
        self._starts = {k: [s.start for s in v] for k, v in self._spans.items()}

    def find(self, camera_id: str, track_id: int, ts: float) -> _Span | None:
        name = f"{camera_id}|{track_id}"
        starts = self._starts.get(name)
        if not starts:
            return None
        i = bisect.bisect_right(starts, ts + EPS_S) - 1
        if i < 0:
            return None
        span = self._spans[name][i]
        return span if ts <= span.end + EPS_S else None


def _last_delivered(client: redis.Redis, stream: str, group: str) -> str | None:
    """The last id of ``stream`` handed to ``group`` (``None``: no such group or stream)."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return None
    for info in groups:
        if as_text(info["name"]) == group:
            return as_text(info["last-delivered-id"])
    return None


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class Backfill:
    """Rebuilds the gallery of ``version`` with ``embedder`` (already loaded with that version's model)
    from ``pool`` (the Redis Streams pool: ``cameras()``, ``stream_key()``, ``parse_entries()``)."""

    def __init__(self, client: redis.Redis, prefix: str, pool: Any, embedder: Embedder, version: str,
                 settings: BackfillConfig | None = None, aggregation: str = "mean") -> None:
        self.client, self.prefix, self.pool, self.embedder, self.version = client, prefix, pool, embedder, version
        self.settings = settings or BackfillConfig()
        self.quality_weighted = aggregation == "quality"
        self.gallery = GalleryStore(client, prefix)
        self.key = backfill_key(prefix, version)
        self.covered_key = f"{self.key}:covered"
        self.progress = BackfillProgress(version)
        self._index = _SpanIndex({})
        self._spans: dict[str, _Span] = {}
        self._skip: set[str] = set()  # tracklets the version's gallery held before this backfill
        self._cursor: dict[str, str] = {}  # camera -> lowest id done (the down pass goes newest first)
        self._high: dict[str, str] = {}  # camera -> highest id covered (the catch-up pass goes up to it)
        self._turn = 0

    # -- plan ------------------------------------------------------------------------------
    def begin(self) -> BackfillProgress:
        """Plan a new backfill, or resume the one a crash interrupted (state ``running``)."""
        self._spans = _known_spans(self.gallery, self.version)
        self._index = _SpanIndex(self._spans)
        stored = backfill_progress(self.client, self.prefix, self.version)
        raw = {as_text(k): as_text(v) for k, v in self.client.hgetall(self.key).items()}
        if stored is not None and stored.state == "running":
            self.progress = stored
            self._cursor = {k[4:]: v for k, v in raw.items() if k.startswith("low:")}
            self._high = {k[5:]: v for k, v in raw.items() if k.startswith("high:")}
            covered = {as_text(k) for k in self.client.smembers(self.covered_key)}
            self._skip = set(self._held()) - covered
            log.info("backfill of version %s resumes: %d crops done", self.version, stored.embedded)
            return self.progress
        self._skip = set(self._held())
        self.progress = BackfillProgress(self.version, started=time.time(), tracklets=len(self._spans),
                                         carried=len(self._skip & set(self._spans)))
        self._cursor, self._high = {}, {}
        for camera in self.pool.cameras() if self._spans else []:
            high = self._high[camera] = _last_delivered(self.client, self.pool.stream_key(camera), LIVE_GROUP) or "0-0"
            if high != "0-0":
                self._cursor[camera] = f"{_id_key(high)[0]}-{_id_key(high)[1] + 1}"  # exclusive: start at high
        self.progress.planned = min(self.settings.max_crops, sum(
            int(self.client.xlen(self.pool.stream_key(c))) for c in self._cursor))
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key, self.covered_key)
        pipe.hset(self.key, mapping=self._fields())
        pipe.execute()
        return self.progress

    def _held(self) -> list[str]:
        return [as_text(k) for k in self.client.hkeys(self.gallery.key("v", self.version))]

    def _fields(self) -> dict[FieldT, EncodableT]:
        p = self.progress
        names = ("state", "error", *_INT_FIELDS, *_FLOAT_FIELDS)
        fields: dict[FieldT, EncodableT] = {name: str(getattr(p, name)) for name in names}
        fields.update({f"low:{c}": v for c, v in self._cursor.items()})
        fields.update({f"high:{c}": v for c, v in self._high.items()})
        return fields

    # -- one batch -----------------------------------------------------------------------------
    def step(self) -> int:
        """Re-embed one batch; returns how many crops it looked at (0: nothing left)."""
        camera, entries = self._next_entries()
        if camera is None:
            return 0
        crops = self.pool.parse_entries(camera, entries)
        mapped, skipped = [], 0
        for crop in crops:
            span = self._index.find(crop.camera_id, crop.track_id, crop.timestamp)
            if span is None or span.key in self._skip:
                skipped += 1
                continue
            image = decode_jpeg(crop.jpeg)
            if image is None:
                skipped += 1
            else:
                mapped.append((crop, span, image))
        records = self._records(mapped)
        self.progress.embedded += len(mapped)
        self.progress.skipped += skipped + len(entries) - len(crops)
        self._commit(records)
        return len(entries)

    def _next_entries(self) -> tuple[str | None, Entries]:
        """The next batch of one camera: entries after ``high`` that the live embedder got meanwhile
        (catch-up), else the next older ones (down pass); round-robin over cameras."""
        budget = self.settings.max_crops - self.progress.embedded - self.progress.skipped
        count = min(self.settings.batch_size, budget)
        if self._spans:  # a camera that appeared since the plan only has crops to catch up with
            for camera in self.pool.cameras():
                self._high.setdefault(camera, "0-0")
        cameras = sorted(self._high)
        for i in range(len(cameras)):
            camera = cameras[(self._turn + i) % len(cameras)]
            stream = self.pool.stream_key(camera)
            live = _last_delivered(self.client, stream, LIVE_GROUP)
            if live and _id_key(live) > _id_key(self._high[camera]):
                entries = cast(Entries, self.client.xrange(stream, f"({self._high[camera]}", live,
                                                           count=self.settings.batch_size))
                if entries:
                    self._high[camera] = as_text(entries[-1][0])
                    self.progress.planned += len(entries)
                    self._turn = (self._turn + i + 1) % len(cameras)
                    return camera, entries
                self._high[camera] = live
            if count <= 0 or camera not in self._cursor:
                continue
            entries = cast(Entries, self.client.xrevrange(stream, f"({self._cursor[camera]}", "-", count=count))
            if len(entries) < count:
                del self._cursor[camera]  # the down pass of this camera reached its oldest crop
            else:
                self._cursor[camera] = as_text(entries[-1][0])
            if entries:
                self._turn = (self._turn + i + 1) % len(cameras)
                return camera, entries
        return None, []

    def _records(self, mapped: list[tuple[Crop, _Span, np.ndarray]]) -> dict[str, TrackletRecord]:
        """The version's records of the touched tracklets, with this batch's features added."""
        if not mapped:
            return {}
        vectors, version = embed_with_version(self.embedder, [image for _, _, image in mapped])
        if version != self.version:
            raise RuntimeError(f"the backfill model gives version {version!r}, expected {self.version!r}")
        keys = sorted({span.key for _, span, _ in mapped})
        stored = self.client.hmget(self.gallery.key("v", self.version), keys)
        records = {k: TrackletRecord.from_json(raw) for k, raw in zip(keys, stored) if raw is not None}
        for (crop, span, _), vec in zip(mapped, np.asarray(vectors, np.float32)):
            vec = vec / max(float(np.linalg.norm(vec)), 1e-12)
            rec = records.get(span.key)
            if rec is None:
                rec = records[span.key] = TrackletRecord(span.key, crop.camera_id, crop.track_id, crop.timestamp,
                                                         crop.timestamp, 0, 0.0, np.zeros_like(vec), span.global_id)
            weight = max(float(crop.confidence), 1e-3) if self.quality_weighted else 1.0
            rec.feature_sum = rec.feature_sum + weight * vec
            rec.count += 1
            rec.weight += weight
            rec.start, rec.end = min(rec.start, crop.timestamp), max(rec.end, crop.timestamp)
        return records

    def _commit(self, records: dict[str, TrackletRecord]) -> None:
        """Records, cursors and counters in one transaction: a crash redoes at most this batch."""
        if records:  # registered from the first record on, so that `selfreid forget` reaches it meanwhile
            self.gallery.register_version(self.version, int(next(iter(records.values())).feature_sum.size))
        pipe = self.client.pipeline(transaction=True)
        if records:
            rows: dict[FieldT, EncodableT] = {k: r.to_json() for k, r in records.items()}
            pipe.hset(self.gallery.key("v", self.version), mapping=rows)
            pipe.sadd(self.covered_key, *records)
        pipe.hset(self.key, mapping=self._fields())
        if finished := [f"low:{c}" for c in self._high if c not in self._cursor]:
            pipe.hdel(self.key, *finished)
        pipe.execute()

    # -- whole run -----------------------------------------------------------------------------
    def run(self, publish: Callable[[BackfillProgress], None] | None = None) -> BackfillProgress:
        """Plan (or resume), re-embed until done or a limit, then hand the gallery over."""
        self.begin()
        deadline, timed_out = time.monotonic() + self.settings.max_s, False
        while self.step():
            self._count_carried()
            if publish:
                publish(self.progress)
            if time.monotonic() >= deadline:
                timed_out = True
                break
        self._count_carried()
        self.progress.state = "partial" if timed_out or self._cursor else "done"
        self.progress.finished = time.time()
        self._hand_over()
        if publish:
            publish(self.progress)
        log.info("backfill of version %s %s: %s", self.version, self.progress.state, self.progress.describe())
        return self.progress

    def _count_carried(self) -> None:
        covered = {as_text(k) for k in self.client.smembers(self.covered_key)}
        self.progress.carried = len((covered | self._skip) & set(self._spans))

    def _hand_over(self) -> None:
        dim = self.embedder.dim
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key, mapping=self._fields())
        pipe.srem(self.gallery.key("retired"), self.version)
        pipe.incr(self.gallery.key("epoch"))  # a running matcher reloads its galleries from Redis
        pipe.execute()
        if dim:
            self.gallery.register_version(self.version, dim)


def run_backfill(cfg: AppConfig, client: redis.Redis, version: str, onnx_path: str, settings: BackfillConfig | None = None,
                 embedder: Embedder | None = None) -> BackfillProgress | None:
    """Rebuild ``version``'s gallery with the model at ``onnx_path`` (``embedder``: one already loaded
    with it); ``None`` when it is off or the configured embedder does not follow the registry (it serves
    a fixed model, so the promoted version never embeds and needs no gallery)."""
    settings = settings or cfg.registry.backfill
    if not settings.enabled:
        return None
    if embedder is None:
        embedder = build_embedder(cfg)  # the contract says whether it follows the registry, whatever its settings
        if not embedder.follows_registry:
            return None
        embedder.load(onnx_path)
    prefix = cfg.pool.prefix
    aggregation = str(cfg.matcher.matcher.params.get("aggregation", "mean"))
    job = Backfill(client, prefix, open_pool(cfg, client), embedder, version, settings, aggregation)

    def publish(progress: BackfillProgress) -> None:
        publish_status(client, prefix, "backfill", progress.as_status(), version)

    return job.run(publish)


def backfill_hook(cfg: AppConfig, client: redis.Redis,
                  settings: BackfillConfig | None = None) -> Callable[[ModelVersion], None]:
    """``before_switch`` for :class:`~selfreid.pipeline.training.registry.ModelRegistry`: backfill the
    version about to be promoted (a :class:`ModelVersion`). A failure is logged and recorded, and the
    switch still happens: the new gallery then fills with new sightings only."""

    def before_switch(target: ModelVersion) -> None:
        try:
            run_backfill(cfg, client, target.version, str(target.onnx), settings)
        except Exception as exc:  # noqa: BLE001 - a failed backfill must not block a promotion
            log.error("backfill of version %s failed (%s); it serves with the sightings from now on", target.version, exc)
            try:
                client.hset(backfill_key(cfg.pool.prefix, target.version), mapping={"state": "failed", "error": str(exc)})
            except redis.RedisError:
                pass

    return before_switch
