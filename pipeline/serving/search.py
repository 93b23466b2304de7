""""Where else was this person seen?": query image -> identities -> cameras, times, thumbnails.

Shared by the HTTP API and ``selfreid search``. The query is embedded with the registry's production
model and compared only with that model version's gallery (the tracklet features the matcher keeps
in Redis). A crop-shaped query (taller than wide) is searched as one person; a wider image goes
through the configured person detector first, and each person found is searched. Every outcome is a
result with a ``message`` (no person, empty gallery, nothing above the threshold); only an
undecodable image, a missing model or a model that gives NaN for the image is an error
(:class:`SearchError`).
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.runtime.status import media_origins, media_position
from selfreid.pipeline.serving.embed import (
    EmbeddingError,
    ModelFollower,
    ProductionLoader,
    build_embedder,
    embed_with_version,
)
from selfreid.plugins.codec import ImageTooLarge, decode_jpeg
from selfreid.plugins.matchers.gallery_store import GalleryStore, TrackletRecord

__all__ = ["IdentitySearch", "SearchError", "Sighting", "Identity"]

log = logging.getLogger(__name__)

CROP_MIN_ASPECT = 1.2  # height / width at or above which a query is taken as a person crop
GALLERY_TTL_S = 2.0


class SearchError(ValueError):
    """The query cannot be searched: not an image, no model to embed it with, or the model gives no
    usable vector for it. ``status`` = HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@dataclass
class Sighting:
    camera_id: str
    track_id: int
    start: float
    end: float
    thumbnail_jpeg_b64: str | None
    recording_from: str | None = None  # position in the recording ("1:05") for a file camera
    recording_to: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "start_iso": _iso(self.start), "end_iso": _iso(self.end)}


@dataclass
class Identity:
    global_id: int
    score: float
    sightings: list[Sighting] = field(default_factory=list)

    @property
    def cameras(self) -> list[str]:
        return sorted({s.camera_id for s in self.sightings})

    def as_dict(self) -> dict[str, Any]:
        return {"global_id": self.global_id, "score": round(self.score, 4), "cameras": self.cameras,
                "sightings": [s.as_dict() for s in self.sightings]}


@dataclass
class _GalleryView:
    loaded_at: float
    records: list[TrackletRecord]  # decided tracklets only
    global_ids: list[int]  # records[i].global_id, narrowed to int
    features: np.ndarray


class IdentitySearch:
    """Embeds queries with the production model and searches the matcher's gallery in Redis."""

    def __init__(self, cfg: AppConfig, client: redis.Redis, embedder=None, detector=None) -> None:
        self.cfg = cfg
        self.client = client
        self.embedder = embedder or build_embedder(cfg)
        fixed = embedder is not None or not self.embedder.follows_registry
        self.follower = None if fixed else ModelFollower(client, cfg.pool.prefix, recheck_s=2.0)
        self.loader = ProductionLoader(self.embedder)
        self.gallery = GalleryStore(client, cfg.pool.prefix)
        self._detector = detector
        self._views: dict[str, _GalleryView] = {}

    # -- model and gallery -----------------------------------------------------------------------
    def refresh_model(self) -> None:
        """Follow promotions; a model that fails to load keeps the previous one serving."""
        record = self.follower.latest() if self.follower else None
        if record is not None and self.loader.due(record):
            try:
                self.loader.load(record)
            except Exception as exc:  # noqa: BLE001 - keep serving the previous model
                log.error("search: cannot load model %s: %s", record["version"], exc)

    def view(self, version: str) -> _GalleryView:
        """Decided tracklets of ``version`` (re-read from Redis at most every 2 s)."""
        cached = self._views.get(version)
        if cached and time.monotonic() - cached.loaded_at < GALLERY_TTL_S:
            return cached
        decided = [(r.global_id, r) for r in self.gallery.load_tracklets(version) if r.global_id is not None]
        records = [r for _, r in decided]
        dim = self.embedder.dim or 1
        features = np.stack([r.feature for r in records]) if records else np.zeros((0, dim), np.float32)
        self._views[version] = _GalleryView(time.monotonic(), records, [gid for gid, _ in decided], features)
        return self._views[version]

    # -- search ------------------------------------------------------------------------------
    def people(self, image: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
        """``(box, crop)`` of each person in a query: the image itself when crop-shaped, else the
        detector's boxes (``[x1, y1, x2, y2]`` in query pixels)."""
        h, w = image.shape[:2]
        if h >= CROP_MIN_ASPECT * w or self._get_detector() is None:
            return [([0, 0, w, h], image)]
        people = []
        for det in self._detector.detect([image])[0]:
            x1, y1, x2, y2 = (int(round(v)) for v in det.box)
            box = [max(0, x1), max(0, y1), min(w, max(0, x2)), min(h, max(0, y2))]
            crop = image[box[1] : box[3], box[0] : box[2]]
            if crop.size:
                people.append((box, crop))
        return people

    def _get_detector(self):
        if self._detector is None:
            from selfreid.plugins import registry

            choice = self.cfg.ingest.detector
            try:
                self._detector = registry.create(
                    "detectors", choice.plugin, choice.params, where="ingest.detector", device="auto"
                )
            except Exception as exc:  # noqa: BLE001 - the search still works on whole images
                log.warning("search: detector %s unavailable (%s); whole images are searched", choice.plugin, exc)
                self._detector = False
        return self._detector or None

    def search_bytes(self, data: bytes, top_k: int | None = None, min_score: float | None = None) -> dict[str, Any]:
        try:
            image = decode_jpeg(data, max_pixels=self.cfg.api.max_image_pixels)
        except ImageTooLarge as exc:
            raise SearchError(str(exc), status=413) from None
        if image is None:
            raise SearchError("the upload is not a decodable image (JPEG/PNG expected)")
        return self.search_image(image, top_k, min_score)

    def search_image(self, image: np.ndarray, top_k: int | None = None, min_score: float | None = None) -> dict[str, Any]:
        """``{"model_version", "people": [...], "message"}``; each person is ``{"box", "identities",
        "best_score", "best_global_id"}``: the identities above ``min_score`` and the closest one even
        when it is below (so a caller can say who was seen and how close the gallery came)."""
        self.refresh_model()
        if not self.embedder.loaded:
            raise SearchError("no production model yet: train and promote one first", status=503)
        top_k = top_k or self.cfg.api.top_k
        min_score = self.cfg.api.min_score if min_score is None else min_score
        found = self.people(image)
        if not found:
            return {"model_version": self.embedder.model_version, "people": [], "message": "no person found in the image"}
        try:
            vectors, version = embed_with_version(self.embedder, [crop for _, crop in found])
        except EmbeddingError as exc:
            raise SearchError(f"this image cannot be searched: {exc}", status=422) from None
        view = self.view(version)
        if not view.records:
            return {"model_version": version, "people": [], "message": f"the gallery of model version {version} is empty"}
        people = [{"box": box, **self._rank(view, q, top_k, min_score)} for (box, _), q in zip(found, vectors)]
        matched = sum(bool(p["identities"]) for p in people)
        message = (f"{matched} of {len(people)} person(s) matched" if matched
                   else f"{len(people)} person(s) found, none with an identity above the threshold {min_score:.2f}")
        return {"model_version": version, "min_score": min_score, "people": people, "message": message}

    def _rank(self, view: _GalleryView, query: np.ndarray, top_k: int, min_score: float) -> dict[str, Any]:
        scores = view.features @ query
        best: dict[int, float] = {}
        for gid, s in zip(view.global_ids, scores.tolist()):
            best[gid] = max(best.get(gid, -2.0), s)
        ranked = sorted(best.items(), key=lambda kv: -kv[1])
        hits = [(gid, s) for gid, s in ranked[:top_k] if s >= min_score]
        return {"best_score": round(ranked[0][1], 4), "best_global_id": ranked[0][0],
                "identities": [self.identity(gid, s, view).as_dict() for gid, s in hits]}

    def identity(self, gid: int, score: float, view: _GalleryView) -> Identity:
        """Every sighting (tracklet) of ``gid`` in the view, oldest first, with thumbnails."""
        records = sorted((r for r in view.records if r.global_id == gid), key=lambda r: r.start)
        thumbs = self.gallery.thumbnails([r.key for r in records])
        origins = media_origins(self.client, self.cfg.pool.prefix)
        sightings = [
            Sighting(r.camera_id, r.track_id, r.start, r.end,
                     base64.b64encode(thumbs[r.key]).decode() if r.key in thumbs else None,
                     media_position(origins.get(r.camera_id, []), r.start),
                     media_position(origins.get(r.camera_id, []), r.end))
            for r in records
        ]
        return Identity(gid, score, sightings)

    def identities(self, version: str | None = None) -> list[Identity]:
        """All identities of a version's gallery (default: the served model's), most cameras first."""
        self.refresh_model()
        version = version or self.embedder.model_version or next(reversed(self.gallery.versions()), "")
        view = self.view(version) if version else _GalleryView(0, [], [], np.zeros((0, 1)))
        gids = sorted(set(view.global_ids))
        out = [self.identity(g, 1.0, view) for g in gids]
        return sorted(out, key=lambda i: (-len(i.cameras), i.global_id))
