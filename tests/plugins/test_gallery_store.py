"""Gallery persistence on a real Redis: an update and its last applied entry id commit together."""

from __future__ import annotations

import numpy as np
import pytest

from selfreid.plugins.contracts import Embedding
from selfreid.plugins.matchers.cross_camera import CrossCameraMatcher


def _embeddings(n: int) -> list[Embedding]:
    vec = np.ones(4, np.float32) / 2
    return [Embedding(f"A/{k}-0", "A", 1.7e9 + k, 7, vec, "v1") for k in range(n)]


def _counts(client) -> list[int]:
    matcher = CrossCameraMatcher(CrossCameraMatcher.Settings(min_crops=1), client=client, prefix="gs")
    return [r.count for r in matcher.gallery("v1").tracklets.values()]


def test_an_update_commits_with_its_entry_id_or_not_at_all(redis_client):
    matcher = CrossCameraMatcher(CrossCameraMatcher.Settings(min_crops=1), client=redis_client, prefix="gs")
    store = matcher.store
    with store.applying("1700000000000-3"):
        matcher.update(_embeddings(3))
        assert redis_client.exists("gs:match:v:v1") == 0  # queued, not yet written
    assert _counts(redis_client) == [3] and store.last_applied() == "1700000000000-3"
    assert store.is_applied("1700000000000-2") and store.is_applied("1700000000000-3")
    assert not store.is_applied("1700000000000-4") and not store.is_applied("1700000000001-0")

    with pytest.raises(RuntimeError), store.applying("1700000000000-9"):  # the matcher dies mid-update
        matcher.update(_embeddings(2))
        raise RuntimeError("crash before commit")
    assert _counts(redis_client) == [3] and store.last_applied() == "1700000000000-3"  # nothing of it written


def test_nothing_is_applied_on_a_fresh_gallery(redis_client):
    store = CrossCameraMatcher(client=redis_client, prefix="gs").store
    assert store.last_applied() is None and not store.is_applied("0-1")
