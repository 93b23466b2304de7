"""A third-party package with one minimal plugin per stage, written only against
``selfreid.plugins.contracts`` (installed for the tests by its ``.dist-info`` beside it).

Two cameras see a red and a green "person" (flat rectangles with stripes); the detector finds them by
colour, the tracker numbers them left to right, the embedder's feature is the mean colour, and the
matcher joins tracklets of similar colour. The pool is the built-in Redis Streams pool seen only
through the :class:`~selfreid.plugins.contracts.PoolStore` members: the pipeline may use no other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from selfreid.plugins.contracts import (
    Assignment,
    Detection,
    EmbedderBase,
    Embedding,
    Frame,
    Index,
    Match,
    MatcherBase,
    PoolStore,
    SourceBase,
)
from selfreid.plugins.matchers.gallery_store import GalleryStore, TrackletRecord, tracklet_key
from selfreid.plugins.pool.redis_streams import RedisStreamPool
from selfreid.plugins.registry import protocol_members

__all__ = [
    "SyntheticSource",
    "ColourDetector",
    "LeftToRightTracker",
    "ContractOnlyPool",
    "MeanColourEmbedder",
    "ListIndex",
    "ColourMatcher",
    "T0",
    "RED",
    "GREEN",
]

T0 = 1.7e9  # frame timestamps: long ago, so that any retention finds them old
RED, GREEN = (0, 0, 255), (0, 255, 0)  # BGR


class SyntheticSource(SourceBase):
    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        frames: int = 30
        mirrored: bool = False  # the green person on the left

    def __init__(self, settings: Settings, camera: Any) -> None:
        self.settings, self.camera_id = settings, camera.id

    def frames(self) -> Iterator[Frame]:
        for i in range(self.settings.frames):
            image = np.zeros((240, 320, 3), np.uint8)
            left, right = (GREEN, RED) if self.settings.mirrored else (RED, GREEN)
            for x, colour in ((30 + i, left), (200 + i, right)):
                image[50:200, x : x + 50] = colour
                image[50:200:10, x : x + 50] //= 2  # stripes: texture for the crop policy's sharpness
            yield Frame(self.camera_id, i + 1, T0 + i / 10, image)


class ColourDetector:
    def __init__(self, device: str = "auto") -> None:
        self.device = device

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        out = []
        for image in images:
            found = []
            for channel in (1, 2):
                others = [c for c in range(3) if c != channel]
                ys, xs = np.nonzero((image[..., channel] > 100) & (image[..., others].max(axis=-1) < 60))
                if len(xs):
                    found.append(
                        Detection(
                            (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), 0.9
                        )
                    )
            out.append(found)
        return out


class LeftToRightTracker:
    def __init__(self, frame_rate: float = 10.0) -> None:
        self.frame_rate = frame_rate

    def update(self, frame: Frame, detections: Sequence[Detection]) -> list[Detection]:
        ordered = sorted(detections, key=lambda d: d.box[0])
        return [Detection(d.box, d.confidence, i + 1) for i, d in enumerate(ordered)]


class ContractOnlyPool:
    """The Redis Streams pool behind exactly the members of the PoolStore contract."""

    Settings = RedisStreamPool.Settings

    def __init__(self, settings: RedisStreamPool.Settings, *, client: Any, prefix: str) -> None:
        self._inner = RedisStreamPool(settings, client=client, prefix=prefix)


for _name in protocol_members(PoolStore):
    setattr(ContractOnlyPool, _name, property(lambda self, name=_name: getattr(self._inner, name)))


class MeanColourEmbedder(EmbedderBase):
    model_version, dim = "tp-1", 4

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        vectors = np.array([[*im.reshape(-1, 3).mean(axis=0), 1.0] for im in images], np.float32).reshape(
            -1, 4
        )
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class ListIndex:
    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        self.vectors.update(zip(keys, vectors))

    def search(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        return [
            sorted((Match(key, float(v @ q)) for key, v in self.vectors.items()), key=lambda m: -m.score)[:k]
            for q in queries
        ]

    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.vectors.pop(key, None)

    def __len__(self) -> int:
        return len(self.vectors)


class ColourMatcher(MatcherBase):
    """Decides each tracklet at its first crop: the most similar decided tracklet of another camera
    (cosine >= ``threshold``) gives its identity, else a new one. State lives in the GalleryStore."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        threshold: float = 0.95

    def __init__(
        self, settings: Settings, *, client: Any, prefix: str, index_factory: Callable[[], Index]
    ) -> None:
        self.settings, self.index_factory = settings, index_factory
        self.store = GalleryStore(client, prefix)
        self.segments = self.store.load_segments()
        self.rejected: Counter[str] = Counter()
        self.pruned: list[tuple[float | None, float | None]] = []  # the calls, for the test

    def update(self, embeddings: Sequence[Embedding]) -> list[Assignment]:
        out = []
        for emb in sorted(embeddings, key=lambda e: e.timestamp):
            vector = np.asarray(emb.vector, np.float32)
            if vector.ndim != 1:
                self.rejected["malformed_vector"] += 1
                continue
            self.store.register_version(emb.model_version, vector.size)
            name = f"{emb.camera_id}|{emb.track_id}"
            segment = self.segments.setdefault(
                name, {"key": tracklet_key(emb.camera_id, emb.track_id, emb.timestamp)}
            )
            segment["last_ts"] = emb.timestamp
            records = {r.key: r for r in self.store.load_tracklets(emb.model_version)}
            rec = records.pop(segment["key"], None) or TrackletRecord(
                segment["key"],
                emb.camera_id,
                emb.track_id,
                emb.timestamp,
                emb.timestamp,
                0,
                0.0,
                np.zeros_like(vector),
            )
            rec.end, rec.count, rec.weight, rec.feature_sum = (
                emb.timestamp,
                rec.count + 1,
                rec.weight + 1,
                rec.feature_sum + vector,
            )
            if rec.global_id is None:
                out.append(
                    self._decide(rec, [r for r in records.values() if r.camera_id != rec.camera_id], emb)
                )
            self.store.save_tracklets(emb.model_version, [rec])
            self.store.save_segments({name: segment})
        return out

    def _decide(self, rec: TrackletRecord, others: list[TrackletRecord], emb: Embedding) -> Assignment:
        index = self.index_factory()
        index.add(
            [r.key for r in others], np.stack([r.feature for r in others]) if others else np.zeros((0, 4))
        )
        best = {r.key: r for r in others}
        hits = [m for m in index.search(rec.feature[None], 1)[0] if m.score >= self.settings.threshold]
        is_new = not hits
        rec.global_id = self.store.next_global_id() if is_new else best[hits[0].key].global_id
        self.store.emit(
            [
                {
                    "type": "new_identity" if is_new else "matched_across_cameras",
                    "global_id": rec.global_id,
                    "tracklet": rec.key,
                    "camera_id": rec.camera_id,
                }
            ],
            1000,
        )
        return Assignment(
            rec.camera_id,
            rec.track_id,
            rec.global_id,
            1.0 if is_new else hits[0].score,
            is_new,
            emb.model_version,
        )

    def prune(self, now: float | None = None, max_age_s: float | None = None) -> int:
        self.pruned.append((now, max_age_s))
        if now is None or max_age_s is None:  # its own age limit: none
            return 0
        removed = 0
        for version in self.store.versions():
            old = [r.key for r in self.store.load_tracklets(version) if r.end < now - max_age_s]
            self.store.delete_tracklets(version, old, everywhere=True)
            removed += len(old)
        stale = [name for name, seg in self.segments.items() if seg["last_ts"] < now - max_age_s]
        self.store.delete_segments(stale)
        for name in stale:
            del self.segments[name]
        return removed

    def tracklet_of(self, camera_id: str, track_id: int) -> str | None:
        segment = self.segments.get(f"{camera_id}|{track_id}")
        return segment["key"] if segment else None
