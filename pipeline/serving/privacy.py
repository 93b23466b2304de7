"""Privacy: how long a person's data is kept, and deleting one person on request.

**Retention.** ``pool.params.max_age_hours`` is the privacy retention of everything that shows a
person: pool crops, embeddings (each entry holds its crop), gallery tracklets (features and
thumbnails) and matcher events. :func:`enforce_retention` deletes what is older, on the Redis
server's clock (stream entries by when they were added, tracklets by their last crop); the match
service runs it every ``matcher.prune_every_s``, so data ages out even where a camera stopped sending.

**Erasure.** :func:`forget_identity` (``selfreid forget GLOBAL_ID``) deletes one global identity: its
tracklets' crops from every camera's pool stream, their embeddings, their gallery records in every
model version with their ids, thumbnails and open tracker segments, and the identity's events.
A tracklet's crops are those of its camera and tracker id within its time span. Crops and embeddings
go first and the gallery last, so an interrupted call leaves what a second call still finds. A
running matcher notices the deletion (the gallery's epoch) and reloads its galleries before its next
batch, so the forgotten identity is not matched again.

Not reached: what models learnt from the pool (registered versions and training checkpoints), the
current training cycle's snapshot (``{service.state_dir}/cycle/snapshot.npz``, replaced by the
next cycle), and crops still on their way through ingest and the embedder when the call runs: a
person still in view comes back under a new identity. Run it once the person has left the cameras;
a second call then reports nothing left.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.serving.embed import rejected_key
from selfreid.pipeline.serving.embedding_store import EmbeddingStore
from selfreid.plugins import streams
from selfreid.plugins.contracts import Matcher
from selfreid.plugins.matchers.gallery_store import GalleryStore, TrackletRecord, parse_tracklet_key
from selfreid.plugins.streams import server_ms

__all__ = ["RetentionReport", "ForgetReport", "Span", "enforce_retention", "identity_tracklets", "forget_identity"]

EPS_S = 1e-3  # tracklet keys carry their start in whole milliseconds


@dataclass
class _Deleted:
    """Counts of deleted items by kind (every int field but ``tracklets``, which counts what was found)."""

    def _deleted(self) -> list[tuple[str, int]]:
        return [(f.name.replace("_", " "), getattr(self, f.name)) for f in fields(self) if f.name != "tracklets"]

    @property
    def total(self) -> int:
        return sum(n for _, n in self._deleted())

    def describe(self) -> str:
        return ", ".join(f"{n} {name}" for name, n in self._deleted())


@dataclass
class RetentionReport(_Deleted):
    """What one :func:`enforce_retention` pass deleted."""

    crops: int = 0
    embeddings: int = 0
    tracklets_pruned: int = 0
    orphan_thumbnails: int = 0
    events: int = 0
    rejected_crops: int = 0


@dataclass
class ForgetReport(_Deleted):
    """What :func:`forget_identity` found (``tracklets``) and deleted (the rest)."""

    tracklets: int = 0
    crops: int = 0
    embeddings: int = 0
    gallery_records: int = 0
    thumbnails: int = 0
    events: int = 0


def enforce_retention(cfg: AppConfig, client: redis.Redis, matcher: Matcher | None = None) -> RetentionReport:
    """Delete every crop, embedding, event and gallery tracklet older than the pool's retention.

    ``matcher`` (the running one, so its memory agrees with Redis) prunes the gallery; without it the
    gallery is left alone. No retention (``max_age_hours: null``) deletes nothing.
    """
    pool = open_pool(cfg, client)
    age_s = pool.retention_s
    if age_s is None:
        return RetentionReport()
    now_ms = server_ms(client)
    store = GalleryStore(client, cfg.pool.prefix)
    pruned = matcher.prune(now=now_ms / 1000, max_age_s=age_s) if matcher is not None else 0
    return RetentionReport(
        crops=pool.expire(),
        embeddings=EmbeddingStore(client, cfg.pool.prefix).expire(age_s, now_ms),
        tracklets_pruned=pruned,
        orphan_thumbnails=store.expire_orphans(now_ms / 1000 - age_s),
        events=store.expire_events(age_s, now_ms),
        rejected_crops=streams.expire(client, rejected_key(cfg.pool.prefix), age_s, now_ms),
    )


@dataclass(frozen=True)
class Span:
    """Where one tracklet's crops are: its camera, tracker id and time range (seconds, inclusive)."""

    camera_id: str
    track_id: int
    start: float
    end: float

    def covers(self, camera_id: str, track_id: int, timestamp: float) -> bool:
        return (camera_id, track_id) == (self.camera_id, self.track_id) and \
            self.start - EPS_S <= timestamp <= self.end + EPS_S


def identity_tracklets(store: GalleryStore, global_id: int) -> dict[str, Span]:
    """Tracklet key -> span of every tracklet assigned to ``global_id``, in any model version."""
    ids = store.global_ids()
    records: dict[str, list[TrackletRecord]] = defaultdict(list)
    for version in store.versions():
        for rec in store.load_tracklets(version):
            records[rec.key].append(rec)
    last_ts = {seg["key"]: seg["last_ts"] for seg in store.load_segments().values()}
    mine = {k for k, gid in ids.items() if gid == global_id}
    mine |= {k for k, recs in records.items() if any(r.global_id == global_id for r in recs)}
    known = [parse_tracklet_key(k) for k in set(ids) | set(records) | set(last_ts)]
    return {key: _span(key, records.get(key, []), last_ts.get(key), known) for key in mine}


def _span(key: str, records: list[TrackletRecord], last_ts: float | None, known: list[tuple[str, int, float]]) -> Span:
    """From the first to the last crop of the tracklet's gallery records (and its open tracker segment).
    Without either (its records went with a dropped model version), up to where the next known
    tracklet of the same camera and tracker id starts, open-ended when there is none."""
    camera_id, track_id, start = parse_tracklet_key(key)
    ends = [r.end for r in records] + ([last_ts] if last_ts is not None else [])
    if ends:
        return Span(camera_id, track_id, min([r.start for r in records], default=start), max(ends))
    later = [s for cam, track, s in known if (cam, track) == (camera_id, track_id) and s > start + EPS_S]
    return Span(camera_id, track_id, start, min(later, default=math.inf) - 2 * EPS_S)


def _covered(spans: Iterable[Span]) -> Callable[[str, int, float], bool]:
    """``covered(camera_id, track_id, timestamp)``: does a crop fall in one of ``spans``?"""
    by_track = defaultdict(list)
    for span in spans:
        by_track[(span.camera_id, span.track_id)].append(span)
    return lambda cam, track, ts: any(s.covers(cam, track, ts) for s in by_track.get((cam, track), ()))


def forget_identity(cfg: AppConfig, client: redis.Redis, global_id: int,
                    spans: dict[str, Span] | None = None) -> ForgetReport:
    """Delete everything stored about ``global_id`` (see the module docstring); ``spans`` defaults to
    :func:`identity_tracklets`. Returns the counts; all zero when nothing was left."""
    store = GalleryStore(client, cfg.pool.prefix)
    spans = identity_tracklets(store, global_id) if spans is None else spans
    covered = _covered(spans.values())
    pool = open_pool(cfg, client)
    report = ForgetReport(tracklets=len(spans))
    for camera_id in sorted({s.camera_id for s in spans.values()}):
        report.crops += pool.erase(camera_id, lambda c: covered(c.camera_id, c.track_id, c.timestamp))
    report.embeddings = EmbeddingStore(client, cfg.pool.prefix).erase(
        lambda e: covered(e.camera_id, e.track_id, e.timestamp))
    report.events = store.erase_events(lambda e: e.get("global_id") == str(global_id) or e.get("tracklet") in spans)
    report.gallery_records, report.thumbnails = store.forget(spans)  # last: it is how a retry finds the rest
    return report
