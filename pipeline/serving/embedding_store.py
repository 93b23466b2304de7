"""Embeddings in Redis: the stream between the embedder and the matcher.

``{prefix}:embeddings`` is a stream; each entry is one crop's embedding with its model version
(``crop``, ``cam``, ``ts``, ``track``, ``ver``, ``q`` = quality, ``vec`` = raw float32 bytes, ``jpeg``
= the crop, kept for thumbnails). Readers use consumer groups (the matcher's is ``matcher``);
the stream is capped at ``maxlen`` entries (approximate trimming), and by age with the pool's
retention (:meth:`EmbeddingStore.expire`, run by the matcher service): each entry holds a crop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from selfreid.plugins import streams
from selfreid.plugins.codec import as_text
from selfreid.plugins.contracts import Embedding

__all__ = ["EmbeddingStore", "StoredEmbedding"]


@dataclass(frozen=True)
class StoredEmbedding:
    entry_id: str
    embedding: Embedding
    jpeg: bytes


class EmbeddingStore:
    """Append embeddings and read them back through consumer groups."""

    def __init__(self, client: redis.Redis, prefix: str, maxlen: int = 50_000) -> None:
        self.client = client
        self.key = f"{prefix}:embeddings"
        self.maxlen = maxlen
        self._groups: set[str] = set()

    def add(self, items: Sequence[tuple[Embedding, bytes]], pipe: redis.client.Pipeline | None = None) -> list[str]:
        """Store ``(embedding, crop jpeg)`` pairs in one round trip; returns their stream ids. With
        ``pipe`` the writes are only queued on it (for the caller's transaction) and ``[]`` is returned."""
        queue = self.client.pipeline(transaction=False) if pipe is None else pipe
        for emb, jpeg in items:
            fields: dict[Any, Any] = {
                "crop": emb.crop_id,
                "cam": emb.camera_id,
                "ts": repr(float(emb.timestamp)),
                "track": str(int(emb.track_id)),
                "ver": emb.model_version,
                "q": repr(float(emb.quality)),
                "vec": np.asarray(emb.vector, np.float32).tobytes(),
                "jpeg": jpeg,
            }
            queue.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
        return [as_text(i) for i in queue.execute()] if pipe is None else []

    def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        try:
            self.client.xgroup_create(self.key, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    def read(self, group: str, consumer: str, count: int, block_ms: int = 0, pending: bool = False) -> list[StoredEmbedding]:
        """New entries for ``group`` (``pending=True``: this consumer's unacknowledged ones, after a crash)."""
        self._ensure_group(group)
        reply: Any = self.client.xreadgroup(group, consumer, {self.key: "0" if pending else ">"}, count=count,
                                       block=None if pending else block_ms)
        out, gone = [], []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                if fields:
                    out.append(self._decode(as_text(entry_id), fields))
                else:  # a pending entry trimmed or erased since comes back without fields: nothing to redo
                    gone.append(as_text(entry_id))
        self.ack(group, gone)
        return out

    @staticmethod
    def _decode(entry_id: str, f: dict) -> StoredEmbedding:
        emb = Embedding(
            crop_id=as_text(f[b"crop"]),
            camera_id=as_text(f[b"cam"]),
            timestamp=float(f[b"ts"]),
            track_id=int(f[b"track"]),
            vector=np.frombuffer(f[b"vec"], np.float32).copy(),
            model_version=as_text(f[b"ver"]),
            quality=float(f.get(b"q", 1.0)),
        )
        return StoredEmbedding(entry_id, emb, f.get(b"jpeg", b""))

    def expire(self, max_age_s: float, now_ms: int | None = None) -> int:
        """Delete entries added more than ``max_age_s`` ago (server clock); returns how many."""
        return streams.expire(self.client, self.key, max_age_s, now_ms)

    def erase(self, select: Callable[[Embedding], bool]) -> int:
        """Delete the entries whose embedding ``select`` picks; returns how many."""
        return streams.erase(self.client, self.key, lambda entry_id, f: select(self._decode(as_text(entry_id), f).embedding))

    def ack(self, group: str, entry_ids: Sequence[str]) -> int:
        return int(self.client.xack(self.key, group, *entry_ids)) if entry_ids else 0

    def __len__(self) -> int:
        return int(self.client.xlen(self.key))
