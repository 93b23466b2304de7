"""The match service: embeddings stream -> cross-camera matcher -> global identities in Redis.

Consumes ``{prefix}:embeddings`` through the ``matcher`` consumer group (one matcher per site: it
holds the gallery), feeds the configured matcher plugin, keeps the latest crop of every tracklet as
its thumbnail, acknowledges after the matcher has persisted its state, and every
``matcher.prune_every_s`` prunes the gallery by age and enforces the privacy retention
(:func:`~selfreid.pipeline.serving.privacy.enforce_retention`). When ``selfreid forget`` deleted gallery data
(the gallery's epoch changed), the matcher is rebuilt from Redis before the next batch, so no
forgotten feature stays in its index. Unacknowledged entries of a previous run are read first. On a
clean stop, tracklets still short of ``min_crops`` are decided (so a recorded video ends fully matched).

**Exactly one matcher.** The loop runs while this process holds the site's matcher lock
(:mod:`~selfreid.pipeline.runtime.leader`); a second instance is a standby that takes over within the
lock's TTL when the leader dies, continuing from the gallery and the pending entries in Redis.

**Calibration follows the model.** Each registered version's association calibration (the ``calibration``
of its registry record) is given to the matcher when it is built and when a version is promoted
(:class:`CalibrationFollower`); a threshold pinned in the matcher's settings still wins.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from selfreid.pipeline.config import AppConfig
from selfreid.pipeline.runtime.leader import Leadership, hold_leadership
from selfreid.pipeline.runtime.redis_conn import check_credentials, connect
from selfreid.pipeline.runtime.signals import StopFlag
from selfreid.pipeline.runtime.status import publish_status
from selfreid.pipeline.serving.embed import ModelFollower
from selfreid.pipeline.serving.embedding_store import EmbeddingStore, StoredEmbedding
from selfreid.pipeline.serving.privacy import enforce_retention
from selfreid.pipeline.training.registry import index_key
from selfreid.plugins import registry
from selfreid.plugins.codec import as_text
from selfreid.plugins.contracts import Index, Matcher
from selfreid.plugins.matchers.gallery_store import GalleryStore
from selfreid.reid_model.calibration import AssociationCalibration, CalibrationError

__all__ = [
    "run_matcher", "build_matcher", "MatchStats", "GROUP", "CalibrationFollower", "registered_calibrations",
    "leader_key",
]

log = logging.getLogger(__name__)

GROUP = "matcher"
CONSUMER = "matcher-0"
STATUS_EVERY_S = 2.0


def build_matcher(cfg: AppConfig, client: redis.Redis) -> Matcher:
    """The configured matcher plugin on ``client``, with the configured index plugin for its galleries."""

    def index_factory() -> Index:
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


def _thumbnails(matcher: Matcher, items: list[StoredEmbedding]) -> dict[str, bytes]:
    """The latest crop of each tracklet touched by this batch."""
    out = {}
    for item in items:
        key = matcher.tracklet_of(item.embedding.camera_id, item.embedding.track_id)
        if key and item.jpeg:
            out[key] = item.jpeg
    return out


def registered_calibrations(client: redis.Redis, prefix: str) -> dict[str, AssociationCalibration]:
    """Each registered version's association calibration, from the registry's Redis index (a version
    without one is left out; so is a malformed one, with a warning)."""
    out = {}
    for version, raw in client.hgetall(index_key(prefix)).items():
        record = json.loads(raw)
        if not record.get("calibration"):
            continue
        try:
            out[as_text(version)] = AssociationCalibration.from_dict(record["calibration"])
        except CalibrationError as exc:
            log.warning("matcher: model version %s: ignoring its calibration (%s)", as_text(version), exc)
    return out


class CalibrationFollower:
    """Gives the running matcher every registered version's calibration: when it is built (start,
    or rebuilt after ``selfreid forget``) and when a version is promoted. A threshold pinned in the
    matcher's settings still wins (the matcher decides that)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix
        self.models = ModelFollower(client, prefix)
        self._matcher: Matcher | None = None
        self._applied: dict[str, AssociationCalibration] = {}

    def apply(self, matcher: Matcher) -> None:
        """Calibrate ``matcher`` fully when it is new to this follower, else only the versions whose
        calibration changed since a promotion (checked between batches; cheap when nothing changed)."""
        promoted = self.models.latest() is not None
        if matcher is self._matcher and not promoted:
            return
        calibrations = registered_calibrations(self.client, self.prefix)
        for version, calibration in calibrations.items():
            if matcher is not self._matcher or self._applied.get(version) != calibration:
                matcher.set_calibration(calibration, version)
        self._matcher, self._applied = matcher, calibrations

    def close(self) -> None:
        self.models.close()


class _MatchLoop:
    """The leader's work; :func:`run_matcher` drives it."""

    def __init__(self, cfg: AppConfig, client: redis.Redis) -> None:
        self.cfg, self.client = cfg, client
        self.stats = MatchStats()
        self.store = EmbeddingStore(client, cfg.pool.prefix, cfg.embedder.stream_maxlen)
        self.gallery = GalleryStore(client, cfg.pool.prefix)
        self.calibrations = CalibrationFollower(client, cfg.pool.prefix)
        self.matcher: Matcher | None = None
        self.epoch: int | None = None
        self.pending = True  # recover this consumer's unacked entries first
        self.last_prune = time.monotonic()
        self.last_status = 0.0

    def step(self) -> None:
        if (current := self.gallery.epoch()) != self.epoch:  # data was forgotten behind our back: reload
            self.matcher, self.epoch = None, current
        matcher = self.matcher = self.matcher or build_matcher(self.cfg, self.client)
        self.calibrations.apply(matcher)
        self.stats.state = "running"
        batch = self.cfg.matcher.batch_size
        items = self.store.read(GROUP, CONSUMER, batch, block_ms=500, pending=self.pending)
        self.pending = self.pending and bool(items)
        if items:
            self._match(matcher, items)
        if time.monotonic() - self.last_prune >= self.cfg.matcher.prune_every_s:
            self.stats.pruned += matcher.prune()
            self.stats.expired += enforce_retention(self.cfg, self.client, matcher).total
            self.last_prune = time.monotonic()

    def _match(self, matcher: Matcher, items: list[StoredEmbedding]) -> None:
        # Entries the gallery already holds (applied, then a crash before the ack) are only acknowledged.
        fresh = [i for i in items if not self.gallery.is_applied(i.entry_id)]
        assignments = []
        if fresh:
            with matcher.applying(fresh[-1].entry_id):
                assignments = matcher.update([i.embedding for i in fresh])
        self.gallery.save_thumbnails(_thumbnails(matcher, items))
        self.store.ack(GROUP, [i.entry_id for i in items])
        self.stats.embeddings += len(items)
        self.stats.assignments += len(assignments)
        self.stats.new_identities += sum(a.is_new for a in assignments)
        self.stats.rejected = dict(matcher.rejected)

    def serve(self, lead: Leadership, stop: StopFlag) -> None:
        """Match while this process leads; on a clean stop, decide what still waits (a recording's end)."""
        while lead.held and not stop.is_set():
            try:
                self.step()
            except (redis.RedisError, OSError) as exc:
                self.stats.errors += 1
                log.warning("matcher: redis unavailable (%s); retrying", exc)
                self.matcher = None  # its memory may hold an update that was never committed
                stop.wait(2.0)
            except Exception:  # noqa: BLE001 - the service logs and keeps going
                self.stats.errors += 1
                log.exception("matcher: step failed; its embeddings stay pending and are read again")
                self.matcher, self.pending = None, True
                stop.wait(1.0)
            if time.monotonic() - self.last_status >= STATUS_EVERY_S:
                self.status()
        if lead.held:
            self.flush()
        self.matcher, self.pending = None, True  # a leader that lost the lock starts over when it leads again

    def flush(self) -> None:
        try:
            decided = self.matcher.flush() if self.matcher is not None else []
        except (redis.RedisError, OSError) as exc:
            log.warning("matcher: could not decide pending tracklets at stop (%s); they stay pending", exc)
            return
        self.stats.assignments += len(decided)
        self.stats.new_identities += sum(a.is_new for a in decided)

    def status(self) -> None:
        try:
            publish_status(self.client, self.cfg.pool.prefix, "matcher", self.stats.as_status())
        except (redis.RedisError, OSError):
            pass
        self.last_status = time.monotonic()


def leader_key(prefix: str) -> str:
    """The lock that makes one matcher per site (it holds the gallery in memory)."""
    return f"{prefix}:matcher:leader"


def run_matcher(cfg: AppConfig, redis_url: str, stop: StopFlag) -> MatchStats:
    """Run until ``stop`` is set; returns the counters. Only the holder of the site's matcher lock
    matches and publishes the matcher's status; another instance waits silently as a standby and takes
    over when the holder goes. Raises ``redis.AuthenticationError`` at once when Redis refuses the password."""
    with connect(redis_url) as client:
        check_credentials(client)
        loop = _MatchLoop(cfg, client)
        led = False
        try:
            while not stop.is_set():
                loop.stats.state = "standby"
                with hold_leadership(client, leader_key(cfg.pool.prefix), stop) as lead:
                    led = led or lead.held
                    loop.serve(lead, stop)
        finally:
            loop.stats.state = "stopped"
            if led:
                loop.status()
            loop.calibrations.close()
    return loop.stats
