"""The cross-camera matcher on synthetic identities: association rules, persistence, versions, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from selfreid.plugins import registry
from selfreid.plugins.contracts import Embedding, Matcher
from selfreid.plugins.matchers.cross_camera import DEFAULT_THRESHOLD, CrossCameraMatcher
from selfreid.plugins.matchers.faiss_index import FaissIndex
from selfreid.reid_model.calibration import AssociationCalibration

DIM = 32
PEOPLE = np.random.default_rng(0).standard_normal((6, DIM)).astype(np.float32)


def crops(person: int, camera: str, track: int, t0: float, n: int = 4, version: str = "v1", dt: float = 1.0,
          noise: float = 0.1, seed: int = 0) -> list[Embedding]:
    """``n`` noisy embeddings of one person as one camera's tracklet, one per ``dt`` seconds."""
    rng = np.random.default_rng(seed + 1000 * person + track)
    out = []
    for i in range(n):
        v = PEOPLE[person] + noise * rng.standard_normal(DIM).astype(np.float32)
        out.append(Embedding(f"{camera}/{track}/{i}", camera, t0 + i * dt, track, v / np.linalg.norm(v), version))
    return out


def make(redis_client, **settings) -> CrossCameraMatcher:
    params = {"threshold": 0.8, "min_crops": 3, **settings}
    return registry.create("matchers", "cross_camera", params, where="matcher", client=redis_client, prefix="t")


def gid(assignments, camera: str, track: int) -> int:
    return {(a.camera_id, a.track_id): a.global_id for a in assignments}[(camera, track)]


def events(redis_client) -> list[dict]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in redis_client.xrange("t:events")]


def test_same_person_two_cameras_one_identity(redis_client):
    m = make(redis_client)
    assert isinstance(m, Matcher)
    first = m.update(crops(0, "A", 1, 0) + crops(1, "A", 2, 0))
    second = m.update(crops(0, "B", 7, 30) + crops(2, "B", 8, 30))
    assert gid(second, "B", 7) == gid(first, "A", 1)
    assert len({gid(first, "A", 1), gid(first, "A", 2), gid(second, "B", 8)}) == 3
    kinds = [e["type"] for e in events(redis_client)]
    assert kinds.count("new_identity") == 3 and kinds.count("matched_across_cameras") == 1
    matched = next(e for e in events(redis_client) if e["type"] == "matched_across_cameras")
    assert matched["camera_id"] == "B" and matched["matched_camera_id"] == "A" and float(matched["score"]) > 0.8


def test_pending_until_min_crops_and_flush(redis_client):
    m = make(redis_client, min_crops=5)
    assert m.update(crops(0, "A", 1, 0, n=2)) == []
    assert m.update([]) == []
    flushed = m.flush()
    assert len(flushed) == 1 and flushed[0].is_new


def test_never_joins_overlapping_tracklets_of_one_camera(redis_client):
    m = make(redis_client)
    out = m.update(crops(0, "A", 1, 0) + crops(0, "A", 2, 1))  # same look, same camera, same time
    assert gid(out, "A", 1) != gid(out, "A", 2)
    later = m.update(crops(0, "A", 3, 100))  # same camera after both ended: allowed
    assert gid(later, "A", 3) in {gid(out, "A", 1), gid(out, "A", 2)}


def test_time_window(redis_client):
    m = make(redis_client, window_s=60)
    a = m.update(crops(0, "A", 1, 0))
    b = m.update(crops(0, "B", 1, 500))
    assert gid(b, "B", 1) != gid(a, "A", 1)


def test_transition_table(redis_client):
    table = [{"from_camera": "A", "to_camera": "B", "min_s": 5, "max_s": 60, "bidirectional": False}]
    m = make(redis_client, transitions=table)
    a = m.update(crops(0, "A", 1, 0) + crops(1, "A", 2, 0) + crops(2, "A", 3, 0))
    ok = m.update(crops(0, "B", 1, 20))  # A -> B after ~17 s: listed
    too_late = m.update(crops(1, "B", 2, 300))  # A -> B after ~300 s: slower than max_s
    unlisted = m.update(crops(2, "C", 1, 20))  # A -> C: not in the table
    assert gid(ok, "B", 1) == gid(a, "A", 1)
    assert gid(too_late, "B", 2) != gid(a, "A", 2)
    assert gid(unlisted, "C", 1) != gid(a, "A", 3)


def test_global_ids_survive_a_restart(redis_client):
    first = make(redis_client)
    a = first.update(crops(0, "A", 1, 0) + crops(1, "A", 2, 0))
    del first
    second = make(redis_client)  # new instance, same Redis
    cont = second.update(crops(0, "A", 1, 4, n=2))  # the same tracklet goes on
    b = second.update(crops(1, "B", 5, 30))  # seen in another camera
    new = second.update(crops(3, "B", 6, 30))  # a stranger: a new id, never a reused one
    assert gid(cont, "A", 1) == gid(a, "A", 1)
    assert gid(b, "B", 5) == gid(a, "A", 2)
    assert gid(new, "B", 6) > max(gid(a, "A", 1), gid(a, "A", 2))


class SpyIndex(FaissIndex):
    """Records the version of every vector it is given, to prove galleries never mix."""

    def __init__(self, log: list) -> None:
        super().__init__()
        self.log = log

    def add(self, keys, vectors):
        self.log.append(("add", id(self), len(keys)))
        super().add(keys, vectors)

    def search(self, queries, k):
        self.log.append(("search", id(self), len(queries)))
        return super().search(queries, k)


def test_model_swap_never_compares_across_versions(redis_client):
    log: list = []
    m = CrossCameraMatcher(CrossCameraMatcher.Settings(threshold=0.8, min_crops=3), client=redis_client,
                           prefix="t", index_factory=lambda: SpyIndex(log))
    a = m.update(crops(0, "A", 1, 0, version="v1"))
    # identical vectors, but produced by model v2: must not be compared with v1's gallery
    b = m.update(crops(0, "B", 1, 30, version="v2"))
    assert gid(b, "B", 1) != gid(a, "A", 1)
    assert m.comparisons == {"v1": 1, "v2": 1}
    v1_index, v2_index = m.gallery("v1").index, m.gallery("v2").index
    assert v1_index is not v2_index and len(v1_index) == 1 and len(v2_index) == 1
    # a tracklet decided under v1 keeps its id under v2 (tracker continuity, no comparison)
    cont = m.update(crops(0, "A", 1, 4, n=2, version="v2"))
    assert gid(cont, "A", 1) == gid(a, "A", 1) and m.comparisons["v2"] == 1
    stored = {k.decode(): json.loads(v)["dim"] for k, v in redis_client.hgetall("t:match:versions").items()}
    assert stored == {"v1": DIM, "v2": DIM}


def test_old_versions_are_dropped(redis_client):
    m = make(redis_client, max_versions=2)
    for v in ("v1", "v2", "v3"):
        m.update(crops(0, "A", 1, 0, version=v))
    assert set(m.store.versions()) == {"v2", "v3"} and not redis_client.exists("t:match:v:v1")
    assert m.update(crops(1, "B", 2, 50, version="v1")) == []  # late v1 embeddings: rejected, v2 is kept
    assert m.rejected == {"retired_version": 4} and set(m.store.versions()) == {"v2", "v3"}
    assert make(redis_client, max_versions=2).update(crops(1, "B", 2, 60, version="v1")) == []  # after a restart too


def test_bad_embeddings_are_rejected_not_raised(redis_client):
    m = make(redis_client)
    m.update(crops(0, "A", 1, 0))
    wrong_dim = Embedding("x", "B", 1.0, 9, np.ones(DIM + 3, np.float32), "v1")
    nan = Embedding("y", "B", 1.0, 9, np.full(DIM, np.nan, np.float32), "v1")
    matrix = Embedding("z", "B", 1.0, 9, np.ones((2, DIM), np.float32), "v1")
    assert m.update([wrong_dim, nan, matrix]) == []
    assert m.rejected == {"dimension_mismatch": 1, "malformed_vector": 2}
    with pytest.raises(KeyError, match="no gallery"):
        m.gallery("never-seen")


def test_prune_by_age(redis_client):
    m = make(redis_client, max_age_s=100)
    m.update(crops(0, "A", 1, 0) + crops(1, "A", 2, 0))
    m.update(crops(2, "B", 1, 500))
    assert m.prune() == 2
    assert list(m.identities("v1")) == [3]
    assert len(m.gallery("v1").index) == 1 and redis_client.hlen("t:match:v:v1") == 1


def test_quality_weighting_limits_outliers(redis_client):
    good = crops(0, "A", 1, 0, n=4)
    outlier = Embedding("o", "A", 4.0, 1, PEOPLE[1] / np.linalg.norm(PEOPLE[1]), "v1", quality=0.01)
    person0 = PEOPLE[0] / np.linalg.norm(PEOPLE[0])
    cos = {}
    for mode in ("mean", "quality"):
        redis_client.flushall()
        m = make(redis_client, aggregation=mode, min_crops=10)
        m.update(good + [outlier])
        cos[mode] = float(m.gallery("v1").tracklets[m.tracklet_of("A", 1)].feature @ person0)
    assert cos["quality"] > cos["mean"]


def calibration(threshold: float) -> AssociationCalibration:
    return AssociationCalibration(threshold, "eer", 0.9, 0.05, 0.3, 0.1, 10, 20, 8.5, 1.0)


def test_each_version_links_at_its_calibrated_threshold_unless_pinned(redis_client):
    m = make(redis_client, threshold=None)
    assert m.threshold("v1") == DEFAULT_THRESHOLD  # no calibration yet: the ImageNet default
    m.set_calibration(calibration(-0.9), version="v1")  # a model whose different people still score > -0.9
    m.set_calibration(calibration(0.999), version="v2")
    a = m.update(crops(0, "A", 1, 0) + crops(0, "A", 1, 0, version="v2"))
    b = m.update(crops(1, "B", 2, 30) + crops(1, "B", 2, 30, version="v2"))
    assert m.threshold("v1") == -0.9 and m.threshold("v2") == 0.999
    gids = {(x.model_version, x.camera_id): x.global_id for x in a + b}
    assert gids[("v1", "B")] == gids[("v1", "A")]  # v1 links everything above -0.9
    m.set_calibration(None, version="v1")
    m.set_calibration(calibration(0.5))  # the default for versions without their own
    assert m.threshold("v1") == 0.5 and m.threshold("v2") == 0.999
    pinned = make(redis_client, threshold=0.8)
    pinned.set_calibration(calibration(-0.9), version="v1")
    assert pinned.threshold("v1") == 0.8  # a threshold pinned in the config wins


def test_margin_leaves_an_ambiguous_match_unlinked(redis_client):
    u, w = np.eye(DIM, dtype=np.float32)[:2]
    twins = {0: u, 1: 0.92 * u + 0.39 * w}  # two people at cosine 0.92

    def seen(person: int, camera: str, track: int, t0: float) -> list[Embedding]:
        return [Embedding(f"{camera}/{track}/{i}", camera, t0 + i, track, twins[person], "v1") for i in range(3)]

    out = {}
    for margin in (0.0, 0.2):
        redis_client.flushall()
        m = make(redis_client, margin=margin, threshold=0.5)
        a = m.update(seen(0, "A", 1, 0) + seen(1, "A", 2, 0))
        out[margin] = (gid(a, "A", 1), gid(m.update(seen(0, "B", 3, 30)), "B", 3))
    assert out[0.0][0] == out[0.0][1]  # best above threshold wins
    assert out[0.2][0] != out[0.2][1]  # best beats the runner-up by 0.08 < margin: a new identity


def test_cannot_link_splits_a_tracklet_that_grows_into_an_overlap(redis_client):
    m = make(redis_client, threshold=0.5, tracklet_gap_s=10)
    first = m.update(crops(0, "A", 1, 0, n=3))  # track 1: [0, 2]
    second = m.update(crops(0, "A", 2, 4, n=3, seed=1))  # track 2 looks the same and starts after: joins
    assert gid(second, "A", 2) == gid(first, "A", 1)
    third = m.update(crops(0, "A", 1, 5, n=2, seed=2))  # track 1 goes on at 5-6 s: both on screen at once
    assert gid(third, "A", 1) == gid(first, "A", 1)  # the earlier one keeps the identity
    assert gid(third, "A", 2) != gid(first, "A", 1)  # the later one leaves, and the caller is told
    split = [e for e in events(redis_client) if e.get("reason") == "cannot_link"]
    assert len(split) == 1 and split[0]["left_global_id"] == str(gid(first, "A", 1))
    for members in m.identities("v1").values():
        for x in members:
            assert not any(y is not x and y.camera_id == x.camera_id and y.start <= x.end and x.start <= y.end
                           for y in members)


def test_an_uninformative_calibration_leaves_the_default_threshold(redis_client):
    m = make(redis_client, threshold=None)
    m.set_calibration(dataclasses.replace(calibration(0.72), auc=0.38), version="v1")  # halves below co-occurring pairs
    assert m.threshold("v1") == DEFAULT_THRESHOLD
    m.set_calibration(dataclasses.replace(calibration(0.72), auc=0.51), version="v1")
    assert m.threshold("v1") == 0.72
