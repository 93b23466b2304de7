"""The match service: embeddings stream -> cross-camera matcher -> global identities in Redis.

Consumes ``{prefix}:embeddings`` through the ``matcher`` consumer group (one matcher per site: it
holds the gallery), feeds the configured matcher plugin, keeps the latest crop of every tracklet as
its thumbnail, acknowledges after the matcher has persisted its state, and every
``matcher.prune_every_s`` prunes the gallery by age and enforces the privacy retention
(:func:`~selfreid.pipeline.serving.privacy.enforce_retention`). When ``selfreid forget`` deleted gallery data
(the gallery's epoch changed), the matcher is rebuilt from Redis before the next batch, so no
forgotten feature stays in its index. Unacknowledged entries of a previous run are read first. On a
clean stop, tracklets still short of ``min_crops`` are decided (so a recorded video ends fully matched).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.serving.embed import StopFlag
from selfreid.pipeline.serving.embedding_store import EmbeddingStore, StoredEmbedding
from selfreid.pipeline.serving.privacy import enforce_retention
from selfreid.pipeline.runtime.status import publish_status
from selfreid.plugins import registry
from selfreid.plugins.matchers.gallery_store import GalleryStore

__all__ = ["run_matcher", "build_matcher", "MatchStats", "GROUP"]

log = logging.getLogger(__name__)

GROUP = "matcher"
CONSUMER = "matcher-0"
STATUS_EVERY_S = 2.0


def build_matcher(cfg: AppConfig, client: redis.Redis):
    """The configured matcher plugin on ``client``, with the configured index plugin for its galleries."""

    def index_factory():
        return registry.create("indexes", cfg.matcher.index.plugin, cfg.matcher.index.params, where="matcher.index")

    return registry.create(
        "matchers", cfg.matcher.matcher.plugin, cfg.matcher.matcher.params, where="matcher.matcher",
        client=client, prefix=cfg.pool.prefix, index_factory=index_factory,
    )


@dataclass
class MatchStats:
    embeddings: int = 0
    assignments: int = 0
    pruned: int = 0
    expired: int = 0
    errors: int = 0
    new_identities: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    state: str = "starting"

    def as_status(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _thumbnails(matcher, items: list[StoredEmbedding]) -> dict[str, bytes]:
    """The latest crop of each tracklet touched by this batch."""
    out = {}
    for item in items:
        key = getattr(matcher, "tracklet_of", lambda *_: None)(item.embedding.camera_id, item.embedding.track_id)
        if key and item.jpeg:
            out[key] = item.jpeg
    return out


def _step(matcher, store: EmbeddingStore, gallery: GalleryStore, stats: MatchStats, batch: int, pending: bool) -> int:
    items = store.read(GROUP, CONSUMER, batch, block_ms=500, pending=pending)
    if not items:
        return 0
    assignments = matcher.update([i.embedding for i in items])
    gallery.save_thumbnails(_thumbnails(matcher, items))
    store.ack(GROUP, [i.entry_id for i in items])
    stats.embeddings += len(items)
    stats.assignments += len(assignments)
    stats.new_identities += sum(a.is_new for a in assignments)
    stats.rejected = dict(getattr(matcher, "rejected", {}))
    return len(items)


def run_matcher(cfg: AppConfig, redis_url: str, stop: StopFlag) -> MatchStats:
    """Run until ``stop`` is set; returns the counters."""
    client = redis.Redis.from_url(redis_url)
    stats = MatchStats()
    store = EmbeddingStore(client, cfg.pool.prefix, cfg.embedder.stream_maxlen)
    gallery = GalleryStore(client, cfg.pool.prefix)
    matcher, epoch = None, None
    pending, last_prune, last_status = True, time.monotonic(), 0.0
    try:
        while not stop.is_set():
            try:
                if (current := gallery.epoch()) != epoch:  # data was forgotten behind our back: reload
                    matcher, epoch = None, current
                matcher = matcher or build_matcher(cfg, client)
                stats.state = "running"
                got = _step(matcher, store, gallery, stats, cfg.matcher.batch_size, pending)
                pending = pending and got > 0  # recover this consumer's unacked entries first
                if time.monotonic() - last_prune >= cfg.matcher.prune_every_s:
                    stats.pruned += matcher.prune() if hasattr(matcher, "prune") else 0
                    stats.expired += enforce_retention(cfg, client, matcher).total
                    last_prune = time.monotonic()
            except (redis.RedisError, OSError) as exc:
                stats.errors += 1
                log.warning("matcher: redis unavailable (%s); retrying", exc)
                stop.wait(2.0)
            except Exception:  # noqa: BLE001 - the service logs and keeps going
                stats.errors += 1
                log.exception("matcher: step failed; its embeddings stay pending and are read again")
                pending = True
                stop.wait(1.0)
            if time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = _status(client, cfg, stats)
        _flush(matcher, stats)
    finally:
        stats.state = "stopped"
        _status(client, cfg, stats)
        client.close()
    return stats


def _flush(matcher, stats: MatchStats) -> None:
    """On a clean stop, decide the tracklets still waiting for ``min_crops`` (the end of a recording)."""
    try:
        decided = matcher.flush() if matcher is not None and hasattr(matcher, "flush") else []
    except (redis.RedisError, OSError) as exc:
        log.warning("matcher: could not decide pending tracklets at stop (%s); they stay pending", exc)
        return
    stats.assignments += len(decided)
    stats.new_identities += sum(a.is_new for a in decided)


def _status(client: redis.Redis, cfg: AppConfig, stats: MatchStats) -> float:
    try:
        publish_status(client, cfg.pool.prefix, "matcher", stats.as_status())
    except (redis.RedisError, OSError):
        pass
    return time.monotonic()
