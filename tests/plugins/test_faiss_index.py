"""The FAISS index: exact search, automatic switch to IVF, removal, replacement, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from selfreid.plugins import registry
from selfreid.plugins.contracts import Index
from selfreid.plugins.matchers.faiss_index import FaissIndex


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_registered_and_exact():
    index = registry.create("indexes", "faiss", {"exact_max": 100}, where="matcher.index")
    assert isinstance(index, Index)
    assert index.search(_unit(2, 8), 3) == [[], []]  # empty gallery: empty result, no error
    x = _unit(50, 8)
    index.add([f"k{i}" for i in range(50)], x)
    assert index.kind == "flat" and len(index) == 50
    hits = index.search(x[7], 5)[0]
    assert hits[0].key == "k7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    expected = np.argsort(-(x @ x[7]))[:5]
    assert [h.key for h in hits] == [f"k{i}" for i in expected]


def test_switches_to_ivf_and_keeps_recall():
    # clustered data: 60 centres, points near them (what people's embeddings look like)
    centres = _unit(60, 32, seed=1)
    rng = np.random.default_rng(2)
    x = centres[rng.integers(0, 60, 3000)] + 0.15 * rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = FaissIndex(FaissIndex.Settings(exact_max=1000, nprobe=16))
    index.add([f"k{i}" for i in range(1000)], x[:1000])
    assert index.kind == "flat"
    index.add([f"k{i}" for i in range(1000, 3000)], x[1000:])
    assert index.kind == "ivf" and len(index) == 3000
    queries = x[:200]
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    found = index.search(queries, 10)
    recall = np.mean([len({f"k{i}" for i in t} & {m.key for m in f}) / 10 for t, f in zip(truth, found)])
    assert recall >= 0.95


@pytest.mark.parametrize("n", [20, 2000])  # flat, then IVF
def test_remove_and_replace(n):
    index = FaissIndex(FaissIndex.Settings(exact_max=500))
    x = _unit(n, 16)
    keys = [f"k{i}" for i in range(n)]
    index.add(keys, x)
    index.remove(["k3", "unknown"])
    assert len(index) == n - 1 and "k3" not in index
    assert all(m.key != "k3" for m in index.search(x[3], 5)[0])
    index.add(["k4"], x[5:6])  # replacing a key moves it
    assert len(index) == n - 1
    assert {m.key for m in index.search(x[5], 2)[0]} == {"k4", "k5"}


def test_bad_input():
    index = FaissIndex()
    index.add(["a"], _unit(1, 8))
    with pytest.raises(ValueError, match="dimension 4"):
        index.add(["b"], _unit(1, 4))
    with pytest.raises(ValueError, match="dimension 4"):
        index.search(_unit(1, 4), 1)
    with pytest.raises(ValueError, match="duplicate"):
        index.add(["c", "c"], _unit(2, 8))
