"""Cross-camera matcher: one global identity per person, from per-camera tracklets.

How a tracklet gets its global id:

1. Embeddings of one ``(camera, track)`` accumulate into a **tracklet feature** (mean, or weighted by
   crop quality), not single crops. A tracker id seen again after ``tracklet_gap_s`` opens a new
   tracklet (trackers reuse ids after a restart).
2. Once a tracklet holds ``min_crops`` crops it is **decided**: its feature is searched in the gallery
   of decided tracklets (a FAISS inner-product index) and the best identity with cosine ``>= threshold``
   wins, subject to: (a) never a tracklet of the same camera that overlaps in time, for any tracklet
   of that identity (cannot-link); (b) the gap between the two tracklets within ``window_s``; (c) when a
   ``transitions`` table is given, only listed camera pairs, with travel time in ``[min_s, max_s]``;
   (d) with ``margin > 0``, the best identity beats the runner-up identity by at least ``margin``
   (an ambiguous match starts a new identity instead). Otherwise it gets a new id. Ids come from a
   Redis counter and every decision is persisted, so a new matcher on the same Redis continues with
   the same ids.
3. Decided tracklets keep their id and their feature keeps improving as crops arrive, with one
   exception that keeps cannot-link true: when a tracklet grows into a time overlap with another
   tracklet of its camera and identity, they are two people, and the one that started later leaves
   for a new identity (event ``new_identity`` with ``reason: cannot_link``).

**Threshold.** Each model version has its own: the ``threshold`` setting when the user pins one (it
wins), else the version's label-free :class:`~selfreid.reid_model.calibration.AssociationCalibration`
given by :meth:`CrossCameraMatcher.set_calibration` (at registration / hot swap), else
:data:`DEFAULT_THRESHOLD` (calibrated for ImageNet features).

**Model versions.** Every gallery belongs to one model version (``P:match:v:{version}``) and a query
of version v is searched only in v's gallery: no comparison ever mixes versions. After a model swap,
the new version's gallery **starts fresh**; tracklets that were already decided carry their global id
over (the tracker's continuity, no feature comparison), so the new gallery refills with known
identities as people keep being seen. The last ``max_versions`` galleries are kept (late embeddings of
the previous model still match in their own gallery); older ones are dropped, and later embeddings of
a dropped version are rejected (counted in ``rejected["retired_version"]``), never compared.

Events on ``P:events``: ``new_identity``, ``matched_across_cameras`` and ``matched_within_camera``
(with ``score`` and the matched tracklet). :meth:`CrossCameraMatcher.prune` drops tracklets older
than ``max_age_s`` (data time: the newest timestamp seen); the match service also prunes with the
pool's privacy retention on the server clock (:mod:`selfreid.pipeline.serving.privacy`).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.contracts import Assignment, Embedding, Index
from selfreid.plugins.matchers.faiss_index import FaissIndex
from selfreid.plugins.matchers.gallery_store import GalleryStore, TrackletRecord, tracklet_key
from selfreid.reid_model.calibration import MIN_AUC, AssociationCalibration

__all__ = ["CrossCameraMatcher", "Transition", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.85  # cosine for a version without calibration; best on vtest for ImageNet features ~0.88

log = logging.getLogger(__name__)


class Transition(BaseModel):
    """Camera ``from_camera`` connects to ``to_camera`` with a travel time in ``[min_s, max_s]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_camera: str
    to_camera: str
    min_s: float = Field(0.0, ge=0, description="Fastest plausible walk between the two views.")
    max_s: float = Field(600.0, gt=0, description="Slowest plausible walk; longer gaps do not match.")
    bidirectional: bool = True


def _interval_gap(a: TrackletRecord, b: TrackletRecord) -> float:
    """Seconds between two time spans (0 when they overlap)."""
    return max(0.0, a.start - b.end, b.start - a.end)


def _overlap(a: TrackletRecord, b: TrackletRecord) -> bool:
    return a.start <= b.end and b.start <= a.end


def _global_id(rec: TrackletRecord) -> int:
    """The identity of a decided tracklet (only decided tracklets are indexed, grouped and assigned)."""
    if rec.global_id is None:
        raise ValueError(f"tracklet {rec.key} has no global id yet")
    return rec.global_id


@dataclass
class _Gallery:
    """One model version's tracklets and the index of its decided ones."""

    version: str
    dim: int
    index: Index
    tracklets: dict[str, TrackletRecord] = field(default_factory=dict)
    members: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    pending: set[str] = field(default_factory=set)  # tracklets without a global id yet

    def put(self, rec: TrackletRecord) -> None:
        self.tracklets[rec.key] = rec
        if rec.global_id is None:
            self.pending.add(rec.key)
        else:
            self.put_decided(rec)

    def put_decided(self, rec: TrackletRecord) -> None:
        self.index.add([rec.key], rec.feature[None])
        self.members[_global_id(rec)].add(rec.key)
        self.pending.discard(rec.key)

    def drop(self, key: str) -> None:
        rec = self.tracklets.pop(key)
        self.pending.discard(key)
        if rec.global_id is not None:
            self.index.remove([key])
            self.members[rec.global_id].discard(key)


class CrossCameraMatcher:
    """The ``cross_camera`` matcher plugin (see the module docstring)."""

    def applying(self, entry_id: str) -> AbstractContextManager[None]:
        """Gallery writes inside commit with ``entry_id`` as the last applied embeddings entry."""
        return self.store.applying(entry_id)

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        threshold: float | None = Field(
            None, ge=-1, le=1,
            description="Pinned cosine between tracklet features to join an identity (higher = stricter); it wins over "
            "every model's calibration. None (default) = each model version's label-free calibration, or 0.85 for a "
            "version without one. Model-dependent: ~0.88 suits the ImageNet baseline on vtest, ~0.5 an SCL-adapted model.",
        )
        margin: float = Field(
            0.0, ge=0, le=2,
            description="Ratio test: the best identity must beat the runner-up identity by this cosine, else the "
            "tracklet starts a new identity (0 = off: best above threshold wins).",
        )
        min_crops: int = Field(5, ge=1, description="Crops a tracklet needs before it is decided (more = surer, later).")
        aggregation: Literal["mean", "quality"] = Field(
            "mean", description="Tracklet feature: plain mean, or weighted by crop quality (detector confidence)."
        )
        window_s: float | None = Field(3600.0, gt=0, description="Max time between two tracklets to match; None = any.")
        transitions: list[Transition] = Field(
            default_factory=list, description="Camera topology; empty = every camera pair may connect."
        )
        tracklet_gap_s: float = Field(10.0, gt=0, description="A tracker id unseen this long starts a new tracklet.")
        max_age_s: float = Field(7 * 86400.0, gt=0, description="prune() drops tracklets older than this.")
        max_versions: int = Field(2, ge=1, description="Model versions whose galleries are kept.")
        top_k: int = Field(50, ge=1, description="Gallery candidates examined per decision.")
        events_maxlen: int = Field(100_000, ge=100, description="Approximate length cap of the events stream.")

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: redis.Redis,
        prefix: str = "selfreid",
        index_factory: Callable[[], Index] | None = None,
    ) -> None:
        self.settings = settings or self.Settings()
        self.store = GalleryStore(client, prefix)
        self._index_factory = index_factory or FaissIndex
        self._galleries: dict[str, _Gallery] = {}
        self._segments = self.store.load_segments()
        self._now = max((s["last_ts"] for s in self._segments.values()), default=0.0)
        self._retired = self.store.retired_versions()
        self._calibrations: dict[str | None, AssociationCalibration] = {}
        self._moved: list[Assignment] = []  # tracklets moved to a new identity by a cannot-link, not yet returned
        self.rejected: Counter[str] = Counter()
        self.comparisons: Counter[str] = Counter()  # version -> gallery searches (one version per search)

    # -- calibration --------------------------------------------------------------------------
    def set_calibration(self, calibration: AssociationCalibration | None, version: str | None = None) -> None:
        """Use ``calibration`` for ``version``'s decisions (None: for every version without its own).

        Call it when a version is registered or hot-swapped in; ``None`` as calibration forgets it. A
        pinned ``threshold`` setting still wins. Decisions already made are kept.
        """
        if calibration is None:
            self._calibrations.pop(version, None)
        else:
            self._calibrations[version] = calibration
        if calibration is not None and not calibration.informative:
            log.warning("matcher: version %s's calibration is uninformative (AUC %.2f <= %.2f): the default %.2f applies",
                        version or "(default)", calibration.auc, MIN_AUC, DEFAULT_THRESHOLD)
        log.info("matcher: version %s now links at cosine >= %.3f", version or "(default)", self.threshold(version))

    def threshold(self, version: str | None = None) -> float:
        """The cosine at or above which ``version``'s tracklets may join an identity."""
        if self.settings.threshold is not None:
            return self.settings.threshold
        calibration = self._calibrations.get(version) or self._calibrations.get(None)
        if calibration is None or not calibration.informative:  # an uninformative one: no better than a guess
            return DEFAULT_THRESHOLD
        return calibration.threshold

    # -- galleries ----------------------------------------------------------------------------
    def gallery(self, version: str, dim: int | None = None) -> _Gallery:
        """The gallery of ``version``, loaded from Redis on first use."""
        if version in self._galleries:
            return self._galleries[version]
        known = self.store.versions()
        if version not in known and dim is None:
            raise KeyError(f"no gallery for model version {version!r}")
        dim = dim or known[version]["dim"]
        self.store.register_version(version, dim)
        g = _Gallery(version, dim, self._index_factory())
        for rec in self.store.load_tracklets(version):
            g.put(rec)
        self._galleries[version] = g
        self._retire_old_versions()
        return g

    def _retire_old_versions(self) -> None:
        versions = list(self.store.versions())
        for old in versions[: max(0, len(versions) - self.settings.max_versions)]:
            log.info("dropping the gallery of model version %s (keeping %d)", old, self.settings.max_versions)
            self.store.drop_version(old)
            self._galleries.pop(old, None)
            self._retired.add(old)

    # -- the contract ---------------------------------------------------------------------------
    def update(self, embeddings: Sequence[Embedding]) -> list[Assignment]:
        """Add embeddings to their tracklets; return the assignment of every touched, decided tracklet.

        Invalid embeddings (not a finite 1-D vector, or a width that differs from their version's
        gallery) are skipped and counted in :attr:`rejected`; they never raise.
        """
        touched: dict[tuple[str, str], tuple[_Gallery, TrackletRecord]] = {}
        for emb in sorted(embeddings, key=lambda e: e.timestamp):
            found = self._accumulate(emb)
            if found is not None:
                touched[(emb.model_version, found[1].key)] = found
        names = {f"{r.camera_id}|{r.track_id}" for _, r in touched.values()}
        self.store.save_segments({k: self._segments[k] for k in names})
        assignments: list[Assignment] = []
        events: list[dict[str, Any]] = []
        dirty: defaultdict[str, list[TrackletRecord]] = defaultdict(list)
        for g, rec in touched.values():
            if g.version not in self._galleries:  # retired by a newer version within this batch
                continue
            result = self._refresh(g, rec, events)
            dirty[g.version].append(rec)
            if result is not None:
                assignments.append(result)
        for version, records in dirty.items():
            self.store.save_tracklets(version, records)
        self.store.emit(events, self.settings.events_maxlen)
        # tracklets that ended (no crop for tracklet_gap_s) are decided even with fewer than min_crops
        closed = self._now - self.settings.tracklet_gap_s
        return assignments + self._decide_pending(lambda rec: rec.end < closed) + self._take_moved()

    def _take_moved(self) -> list[Assignment]:
        moved, self._moved = self._moved, []
        return moved

    def flush(self) -> list[Assignment]:
        """Decide every pending tracklet now, whatever its crop count (end of a recording, shutdown)."""
        return self._decide_pending(lambda rec: True)

    def _decide_pending(self, ready: Callable[[TrackletRecord], bool]) -> list[Assignment]:
        assignments: list[Assignment] = []
        events: list[dict[str, Any]] = []
        for g in list(self._galleries.values()):
            pending = [g.tracklets[k] for k in g.pending if ready(g.tracklets[k])]
            for rec in sorted(pending, key=lambda r: r.start):
                assignments.append(self._settle(g, rec, events))
            self.store.save_tracklets(g.version, pending)
        self.store.emit(events, self.settings.events_maxlen)
        return assignments

    def _valid(self, emb: Embedding) -> np.ndarray | None:
        vec = np.asarray(emb.vector, np.float32)
        if vec.ndim != 1 or vec.size == 0 or not np.isfinite(vec).all():
            self.rejected["malformed_vector"] += 1
            return None
        if emb.model_version in self._retired:  # a late embedding of a model whose gallery was dropped
            self.rejected["retired_version"] += 1
            return None
        known = self._galleries.get(emb.model_version)
        dim = known.dim if known else self.store.versions().get(emb.model_version, {}).get("dim", vec.size)
        if vec.size != dim:
            self.rejected["dimension_mismatch"] += 1
            log.warning("embedding %s: %d-d, version %s has %d-d; skipped", emb.crop_id, vec.size, emb.model_version, dim)
            return None
        return vec / max(float(np.linalg.norm(vec)), 1e-12)

    def _accumulate(self, emb: Embedding) -> tuple[_Gallery, TrackletRecord] | None:
        vec = self._valid(emb)
        if vec is None:
            return None
        g = self.gallery(emb.model_version, vec.size)
        key = self._segment_key(emb)
        rec = g.tracklets.get(key)
        if rec is None:
            rec = TrackletRecord(key, emb.camera_id, emb.track_id, emb.timestamp, emb.timestamp, 0, 0.0, np.zeros_like(vec))
            g.put(rec)
        weight = max(float(emb.quality), 1e-3) if self.settings.aggregation == "quality" else 1.0
        rec.feature_sum = rec.feature_sum + weight * vec
        rec.count += 1
        rec.weight += weight
        rec.start, rec.end = min(rec.start, emb.timestamp), max(rec.end, emb.timestamp)
        self._now = max(self._now, emb.timestamp)
        return g, rec

    def _segment_key(self, emb: Embedding) -> str:
        """The open tracklet of this tracker id, or a new one after a gap (shared by all versions)."""
        name = f"{emb.camera_id}|{emb.track_id}"
        seg = self._segments.get(name)
        if seg is None or abs(emb.timestamp - seg["last_ts"]) > self.settings.tracklet_gap_s:
            seg = {"key": tracklet_key(emb.camera_id, emb.track_id, emb.timestamp), "last_ts": emb.timestamp}
        seg["last_ts"] = max(seg["last_ts"], emb.timestamp)
        self._segments[name] = seg
        return seg["key"]

    # -- decisions ------------------------------------------------------------------------------
    def _refresh(self, g: _Gallery, rec: TrackletRecord, events: list[dict[str, Any]]) -> Assignment | None:
        """Re-index a decided tracklet; an undecided one carries its id over, or is decided at ``min_crops``."""
        if rec.global_id is None and rec.count < self.settings.min_crops:
            return self._carry_over(g, rec)
        return self._settle(g, rec, events)

    def _settle(self, g: _Gallery, rec: TrackletRecord, events: list[dict[str, Any]]) -> Assignment:
        """:meth:`_refresh` whatever the crop count: every tracklet leaves with a global id."""
        if rec.global_id is not None:
            g.put_decided(rec)  # replaces the index entry with the improved feature
            self._enforce_cannot_link(g, rec, events)
            return self._assignment(g, rec, 1.0, False)
        carried = self._carry_over(g, rec)
        return carried if carried is not None else self._decide(g, rec, events)

    def _carry_over(self, g: _Gallery, rec: TrackletRecord) -> Assignment | None:
        """The id of a tracklet decided under another model version (same tracklet, same person), if any."""
        carried = self.store.global_id_of(rec.key)
        if carried is None:
            return None
        rec.global_id = carried
        g.put_decided(rec)
        return self._assignment(g, rec, 1.0, False)

    def _best_match(self, g: _Gallery, rec: TrackletRecord) -> tuple[TrackletRecord | None, float]:
        """The compatible gallery tracklet most similar to ``rec`` (and its cosine) that passes the
        threshold and the margin over the best compatible tracklet of any other identity."""
        threshold, margin = self.threshold(g.version), self.settings.margin
        best, best_score, runner_up = None, -2.0, -2.0
        for match in g.index.search(rec.feature[None], self.settings.top_k)[0]:  # best first
            if best is None and match.score < threshold:
                break
            other = g.tracklets.get(match.key)
            if other is None or other.global_id is None or not self._compatible(g, rec, other):
                continue
            if best is None:
                best, best_score = other, match.score
            elif other.global_id != best.global_id:
                runner_up = match.score
                break
            if margin <= 0:
                break
        if best is None or best_score < threshold or best_score - runner_up < margin:
            return None, best_score
        return best, best_score

    def _decide(self, g: _Gallery, rec: TrackletRecord, events: list[dict]) -> Assignment:
        self.comparisons[g.version] += 1
        best_other, best_score = self._best_match(g, rec)
        base = self._event_base(g, rec)
        if best_other is None:
            return self._new_identity(g, rec, events)
        best_gid = best_other.global_id
        rec.global_id = best_gid
        kind = "matched_across_cameras" if best_other.camera_id != rec.camera_id else "matched_within_camera"
        events.append({"type": kind, "global_id": best_gid, "score": round(best_score, 4),
                       "matched_camera_id": best_other.camera_id, "matched_tracklet": best_other.key, **base})
        g.put_decided(rec)
        return self._assignment(g, rec, best_score, False)

    @staticmethod
    def _event_base(g: _Gallery, rec: TrackletRecord) -> dict:
        return {"camera_id": rec.camera_id, "track_id": rec.track_id, "tracklet": rec.key,
                "timestamp": rec.start, "model_version": g.version}

    def _new_identity(self, g: _Gallery, rec: TrackletRecord, events: list[dict], **extra) -> Assignment:
        rec.global_id = self.store.next_global_id()
        events.append({"type": "new_identity", "global_id": rec.global_id, **self._event_base(g, rec), **extra})
        g.put_decided(rec)
        return self._assignment(g, rec, 1.0, True)

    def _enforce_cannot_link(self, g: _Gallery, rec: TrackletRecord, events: list[dict]) -> None:
        """``rec`` grew into a time overlap with tracklets of its camera and identity: they are different
        people, so every such tracklet but the earliest-starting one leaves for a new identity."""
        left = _global_id(rec)
        clash = [m for k in g.members[left] if (m := g.tracklets.get(k)) is not None and m.key != rec.key
                 and m.camera_id == rec.camera_id and _overlap(m, rec)]
        if not clash:
            return
        for leaver in sorted(clash + [rec], key=lambda r: (r.start, r.key))[1:]:
            g.members[left].discard(leaver.key)
            moved = self._new_identity(g, leaver, events, reason="cannot_link", left_global_id=left)
            if leaver is not rec:
                self.store.save_tracklets(g.version, [leaver])
                self._moved.append(moved)

    def _compatible(self, g: _Gallery, rec: TrackletRecord, other: TrackletRecord) -> bool:
        """Time window and camera topology against ``other``; no same-camera overlap with its identity."""
        s = self.settings
        if s.window_s is not None and _interval_gap(rec, other) > s.window_s:
            return False
        if other.camera_id != rec.camera_id and s.transitions and not self._transition_ok(other, rec):
            return False
        for key in g.members[_global_id(other)]:
            mate = g.tracklets.get(key)
            if mate is not None and mate.camera_id == rec.camera_id and _overlap(mate, rec):
                return False
        return True

    def _transition_ok(self, a: TrackletRecord, b: TrackletRecord) -> bool:
        first, second = (a, b) if a.start <= b.start else (b, a)
        travel = second.start - first.end
        for t in self.settings.transitions:
            pairs = [(t.from_camera, t.to_camera)] + ([(t.to_camera, t.from_camera)] if t.bidirectional else [])
            if (first.camera_id, second.camera_id) in pairs and t.min_s <= travel <= t.max_s:
                return True
        return False

    @staticmethod
    def _assignment(g: _Gallery, rec: TrackletRecord, score: float, is_new: bool) -> Assignment:
        return Assignment(rec.camera_id, rec.track_id, _global_id(rec), float(score), is_new, g.version)

    # -- maintenance ------------------------------------------------------------------------------
    def prune(self, now: float | None = None, max_age_s: float | None = None) -> int:
        """Drop tracklets whose last crop is older than ``max_age_s`` (default: the setting) before ``now``
        (default: the newest timestamp seen; the privacy retention passes the server clock)."""
        age = self.settings.max_age_s if max_age_s is None else max_age_s
        cutoff = (self._now if now is None else now) - age
        removed = 0
        for version in list(self.store.versions()):
            g = self.gallery(version)
            old = [k for k, r in g.tracklets.items() if r.end < cutoff]
            for key in old:
                g.drop(key)
            self.store.delete_tracklets(version, old, everywhere=True)
            removed += len(old)
        stale = [name for name, seg in self._segments.items() if seg["last_ts"] < cutoff]
        for name in stale:
            del self._segments[name]
        self.store.delete_segments(stale)
        return removed

    def tracklet_of(self, camera_id: str, track_id: int) -> str | None:
        """Key of the open tracklet of this tracker id (thumbnails and reports are keyed by it)."""
        seg = self._segments.get(f"{camera_id}|{track_id}")
        return seg["key"] if seg else None

    def identities(self, version: str) -> dict[int, list[TrackletRecord]]:
        """Decided tracklets of one version's gallery, grouped by global id."""
        out: dict[int, list[TrackletRecord]] = defaultdict(list)
        for rec in self.gallery(version).tracklets.values():
            if rec.global_id is not None:
                out[rec.global_id].append(rec)
        return dict(out)
