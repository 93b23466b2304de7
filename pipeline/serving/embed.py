"""The embed service: pool crops -> ONNX embedder -> embeddings stream (for the matcher).

* Reads crops through the pool's ``embedder`` consumer group with **dynamic batching**: a batch is
  sent when it holds ``embedder.batch_size`` crops or ``embedder.max_wait_ms`` after its first crop.
* Each embedding is stored with its model version (:mod:`selfreid.pipeline.serving.embedding_store`), and a
  batch's embeddings are stored and its crops acknowledged in **one transaction** (MULTI/EXEC): a crash
  before it re-delivers the crops, and no crop is ever stored twice (only a consumer stalled for longer
  than the pool's ``claim_idle_ms``, whose crops another one took over, could still store them again).
* Corrupt JPEGs are counted, written to ``{prefix}:embedder:rejected`` with the reason, and acked; so are
  crops the model fails on or gives NaN/infinite vectors for (``embed_error``): those never reach the matcher.
* The model follows the registry: the production pointer (``{prefix}:models:production``) is read at
  start, so a late joiner gets the current model, and promotions on ``{prefix}:models:promoted``
  swap it **between batches** (no crop is dropped; each batch is tagged with the version that
  embedded it). Without a model the service waits and leaves the crops in the pool.
* Errors (Redis down, a model that fails to load) are logged, counted and retried: it never crashes.
  Only a password that Redis refuses stops it, at start (:func:`~selfreid.pipeline.runtime.redis_conn.check_credentials`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import check_credentials, connect
from selfreid.pipeline.runtime.signals import StopFlag
from selfreid.pipeline.runtime.status import publish_status
from selfreid.pipeline.serving.embedding_store import EmbeddingStore
from selfreid.pipeline.training.registry import production_key, promoted_channel, verify_file
from selfreid.plugins import registry
from selfreid.plugins.codec import decode_jpeg
from selfreid.plugins.contracts import Crop, Embedder, Embedding, PoolStore

__all__ = [
    "run_embedder", "ModelFollower", "EmbedStats", "EmbeddingError", "build_embedder", "embed_with_version",
    "ProductionLoader", "GROUP", "rejected_key",
]

log = logging.getLogger(__name__)

GROUP = "embedder"
STATUS_EVERY_S = 2.0
RETRY_FAILED_S = 30.0  # a promoted model that failed to load is tried again after this long
IDLE_BLOCK_MS = 500


class ModelFollower:
    """The registry's production model, for every process that serves embeddings.

    Reads the pointer key once at start (late joiners) and then listens for promotions; the key is
    re-read every ``recheck_s`` as well, in case a message was missed while disconnected.
    """

    def __init__(self, client: redis.Redis, prefix: str, recheck_s: float = 10.0) -> None:
        self.client = client
        self.key = production_key(prefix)
        self.channel = promoted_channel(prefix)
        self.recheck_s = recheck_s
        self._pubsub: redis.client.PubSub | None = None
        self._checked = 0.0

    def _subscribe(self) -> redis.client.PubSub:
        if self._pubsub is None:
            self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(self.channel)
        return self._pubsub

    def latest(self) -> dict[str, Any] | None:
        """The newest production record seen (a promotion message or the key), or ``None``."""
        pubsub = self._subscribe()
        record = None
        while (message := pubsub.get_message(timeout=0)) is not None:
            record = _parse_record(message.get("data")) or record
        if record is None and time.monotonic() - self._checked >= self.recheck_s:
            record = _parse_record(self.client.get(self.key))
            self._checked = time.monotonic()
        return record

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None


def _parse_record(raw: bytes | str | None) -> dict[str, Any] | None:
    if not raw or not isinstance(raw, (bytes, str)):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        log.warning("ignoring a production-model record that is not JSON: %r", raw[:80])
        return None
    return record if isinstance(record, dict) and record.get("onnx") and record.get("version") else None


class ProductionLoader:
    """Swaps promoted models into an embedder, for every process that serves embeddings.

    A model is loaded once its file matches the checksum of its registry manifest
    (:func:`~selfreid.pipeline.training.registry.verify_file`): the registry verified it when promoting,
    but the file may have been damaged on disk since. A version that failed is tried again only after
    ``retry_s``: the production pointer is re-read every few seconds, and each try hashes the file.
    """

    def __init__(self, embedder: Embedder, retry_s: float = RETRY_FAILED_S) -> None:
        self.embedder = embedder
        self.retry_s = retry_s
        self._failed: tuple[str, float] | None = None  # (version, when to try it again)

    def due(self, record: dict[str, Any] | None) -> bool:
        """``record`` names another version than the one serving, and not one that failed lately."""
        if record is None or record["version"] == self.embedder.model_version:
            return False
        return not (self._failed and self._failed[0] == record["version"] and time.monotonic() < self._failed[1])

    def load(self, record: dict[str, Any]) -> None:
        """Verify and swap in ``record``'s model. Raises when it cannot be used; the model loaded
        before keeps serving and this version waits ``retry_s``."""
        try:
            verify_file(record["onnx"])
            self.embedder.load(record["onnx"])
        except Exception:
            self._failed = (record["version"], time.monotonic() + self.retry_s)
            raise


def build_embedder(cfg: AppConfig) -> Embedder:
    """The configured embedder plugin (not yet loaded when it follows the registry)."""
    return registry.create("embedders", cfg.embedder.plugin, cfg.embedder.params, where="embedder")


@dataclass
class EmbedStats:
    embedded: int = 0
    batches: int = 0
    rejected: Counter = field(default_factory=Counter)
    errors: int = 0
    swaps: int = 0
    last_batch_ms: float = 0.0
    state: str = "starting"

    def as_status(self, embedder: Embedder) -> dict[str, Any]:
        return {
            "state": self.state,
            "model_version": embedder.model_version,
            "provider": embedder.provider,
            "embedded": self.embedded,
            "batches": self.batches,
            "rejected": dict(self.rejected),
            "errors": self.errors,
            "swaps": self.swaps,
            "last_batch_ms": round(self.last_batch_ms, 1),
        }


def rejected_key(prefix: str) -> str:
    """The stream of crops the embedder refused, with the reason (privacy retention applies to it)."""
    return f"{prefix}:embedder:rejected"


class _EmbedLoop:
    """One embedder instance's state; :func:`run_embedder` drives it."""

    def __init__(self, cfg: AppConfig, client: redis.Redis, pool: PoolStore, embedder: Embedder) -> None:
        self.cfg, self.client, self.pool, self.embedder = cfg, client, pool, embedder
        prefix = cfg.pool.prefix
        self.store = EmbeddingStore(client, prefix, cfg.embedder.stream_maxlen)
        self.rejected_key = rejected_key(prefix)
        self.follower = ModelFollower(client, prefix) if embedder.follows_registry else None
        self.consumer = f"embedder-{socket.gethostname()}-{os.getpid()}"
        self.stats = EmbedStats()
        self.loader = ProductionLoader(embedder)

    def follow_registry(self) -> None:
        """Load a newly promoted model between batches; a broken one is retried after 30 s."""
        if self.follower is None:
            return
        record = self.follower.latest()
        if record is None or not self.loader.due(record):
            return
        try:
            self.loader.load(record)
        except Exception as exc:  # noqa: BLE001 - a bad promotion must not stop the service
            log.error("cannot load promoted model %s (%s): %s", record["version"], record["onnx"], exc)
            self.stats.errors += 1
            return
        self.stats.swaps += 1
        log.info("embedder now serves model %s (%s)", self.embedder.model_version, self.embedder.provider)

    def collect(self) -> list[Crop]:
        """Dynamic batching: up to batch_size crops, waiting at most max_wait_ms after the first one."""
        size, wait_s = self.cfg.embedder.batch_size, self.cfg.embedder.max_wait_ms / 1000
        crops = self.pool.read(GROUP, self.consumer, size, block_ms=IDLE_BLOCK_MS)
        deadline = time.monotonic() + wait_s
        while crops and len(crops) < size and (left := deadline - time.monotonic()) > 0:
            crops += self.pool.read(GROUP, self.consumer, size - len(crops), block_ms=max(1, int(left * 1000)))
        return crops

    def process(self, crops: list[Crop]) -> None:
        """Embed, then store and ack in one transaction; corrupt JPEGs are recorded with their reason and
        acked too."""
        started = time.perf_counter()
        good: list[Crop] = []
        images: list[np.ndarray] = []
        bad: list[Crop] = []
        for crop in crops:
            image = decode_jpeg(crop.jpeg)
            (good if image is not None else bad).append(crop)
            if image is not None:
                images.append(image)
        commit = self.client.pipeline(transaction=True)
        stored = self._embed_and_store(good, images, commit)
        if bad:
            self._reject(bad, "corrupt_jpeg", commit)
        self.pool.ack(GROUP, [c.crop_id for c in crops if c.crop_id], pipe=commit)
        commit.execute()
        self.stats.embedded += stored
        self.stats.batches += 1
        self.stats.last_batch_ms = (time.perf_counter() - started) * 1000

    def _embed_and_store(
        self, crops: list[Crop], images: list[np.ndarray], commit: redis.client.Pipeline
    ) -> int:
        """Embed a batch and queue its embeddings on ``commit``; if the model fails on it, retry crop by
        crop and reject only the failing ones (a poison crop must not block its batch forever)."""
        if not images:
            return 0
        try:
            pairs = [(crops, *embed_with_version(self.embedder, images))]
        except Exception as exc:  # noqa: BLE001 - runtimes raise untyped errors
            log.warning("batch of %d failed in the embedder (%s); retrying one by one", len(images), exc)
            pairs, failed = [], []
            for crop, image in zip(crops, images):
                try:
                    pairs.append(([crop], *embed_with_version(self.embedder, [image])))
                except Exception:  # noqa: BLE001
                    failed.append(crop)
            if failed:
                self._reject(failed, "embed_error", commit)
        items = [(_embedding(c, v, version), c.jpeg) for group, vectors, version in pairs for c, v in zip(group, vectors)]
        if items:
            self.store.add(items, pipe=commit)
        return len(items)

    def _reject(self, crops: list[Crop], reason: str, commit: redis.client.Pipeline) -> None:
        self.stats.rejected[reason] += len(crops)
        for crop in crops:
            commit.xadd(self.rejected_key, {"crop": crop.crop_id or "", "cam": crop.camera_id, "reason": reason},
                        maxlen=10_000, approximate=True)
        log.warning("%d crop(s) rejected: %s", len(crops), reason)


class EmbeddingError(ValueError):
    """The model gave vectors with NaN or infinite values: they must never reach the gallery."""


def embed_with_version(embedder: Embedder, images: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """Vectors and the version that produced them (exact even across a concurrent hot swap).
    Raises :class:`EmbeddingError` when any vector is not finite."""
    vectors, version = embedder.embed_versioned(images)
    bad = int((~np.isfinite(vectors).reshape(len(images), -1).all(axis=1)).sum())
    if bad:
        raise EmbeddingError(f"model {version} gave NaN or infinite values for {bad} of {len(images)} crop(s)")
    return vectors, version


def _embedding(crop: Crop, vector: np.ndarray, version: str) -> Embedding:
    return Embedding(crop.crop_id or "", crop.camera_id, crop.timestamp, crop.track_id, vector, version, crop.confidence)


def run_embedder(cfg: AppConfig, redis_url: str, stop: StopFlag, embedder: Embedder | None = None) -> EmbedStats:
    """Run until ``stop`` is set; returns the counters. ``embedder`` overrides the configured plugin.
    Raises ``redis.AuthenticationError`` at once when Redis refuses the password (an outage is waited out)."""
    with connect(redis_url) as client:
        check_credentials(client)
        loop = _EmbedLoop(cfg, client, open_pool(cfg, client), embedder or build_embedder(cfg))
        try:
            _serve(loop, stop)
        finally:
            loop.stats.state = "stopped"
            _status(loop)
            if loop.follower:
                loop.follower.close()
    return loop.stats


def _serve(loop: _EmbedLoop, stop: StopFlag) -> None:
    """Follow the registry and embed batches until ``stop``; errors are counted, logged and retried."""
    last_status = 0.0
    while not stop.is_set():
        try:
            loop.follow_registry()
            if not loop.embedder.loaded:
                loop.stats.state = "waiting for a production model"
                stop.wait(1.0)
            else:
                loop.stats.state = "running"
                crops = loop.collect()
                if crops:
                    loop.process(crops)
        except (redis.RedisError, OSError) as exc:
            loop.stats.errors += 1
            log.warning("embedder: redis unavailable (%s); retrying", exc)
            stop.wait(2.0)
        except Exception:  # noqa: BLE001 - the service logs and keeps going
            loop.stats.errors += 1
            log.exception("embedder: batch failed; its crops stay pending and are retried")
            stop.wait(1.0)
        if time.monotonic() - last_status >= STATUS_EVERY_S:
            last_status = _status(loop)


def _status(loop: _EmbedLoop) -> float:
    try:
        publish_status(loop.client, loop.cfg.pool.prefix, "embedder", loop.stats.as_status(loop.embedder), loop.consumer)
    except (redis.RedisError, OSError):
        pass
    return time.monotonic()
