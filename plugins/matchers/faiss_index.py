"""FAISS inner-product index over L2-normalised vectors, with string keys and removal.

Small galleries use an exact ``IndexFlatIP``. Once the gallery holds more than
``exact_max`` vectors it is rebuilt as an ``IndexIVFFlat`` (inner product) trained on the
gallery itself, and retrained whenever it grows ``retrain_growth`` times past its last
training size (so ``nlist`` keeps up with the data). IVF is used rather than HNSW because it
supports removal natively and has a GPU implementation. Keys are mapped to int64 ids here.

With ``device: auto`` and a FAISS build with GPUs, searches run on a GPU copy of the index,
refreshed lazily after changes; the CPU index stays the source of truth.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from selfreid.plugins.contracts import Match

__all__ = ["FaissIndex"]

log = logging.getLogger(__name__)

TRAIN_PER_LIST = 64  # k-means sample per IVF list (FAISS warns below 39)


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is a declared dependency
        raise ImportError("faiss is missing: pip install 'selfreid[cpu]' (faiss-cpu) or 'selfreid[gpu]'") from exc
    return faiss


class FaissIndex:
    """The ``faiss`` index plugin (see the module docstring)."""

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        exact_max: int = Field(
            50_000, ge=1, description="Exact search up to this many vectors; above it an IVF index is built."
        )
        nlist: int | None = Field(
            None, ge=1, description="IVF lists; None = 4*sqrt(n) clamped to [16, 65536] at each (re)build."
        )
        nprobe: int = Field(32, ge=1, description="IVF lists visited per query: higher = better recall, slower.")
        retrain_growth: float = Field(4.0, gt=1, description="Rebuild the IVF when it grew this many times.")
        train_sample: int = Field(200_000, ge=1000, description="At most this many vectors train the IVF centroids.")
        device: str = Field("auto", description="'auto' = FAISS GPU when available, else CPU; or 'cpu'.")

    def __init__(self, settings: Settings | None = None, dim: int | None = None) -> None:
        self.settings = settings or self.Settings()
        self.dim = dim
        self._index: Any | None = None  # CPU source of truth, a faiss index (faiss ships no type stubs)
        self._gpu_index = None
        self._gpu_dirty = True
        self._trained_size = 0
        self._ids: dict[str, int] = {}
        self._keys: dict[int, str] = {}
        self._next_id = 0

    # -- state -------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """'flat' or 'ivf' ('empty' before the first add)."""
        if self._index is None:
            return "empty"
        return "ivf" if "IVF" in type(self._index).__name__ else "flat"

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def _new_flat(self):
        faiss = _faiss()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _ensure(self, dim: int) -> Any:
        """The CPU index, created for ``dim``-d vectors on the first add."""
        if self.dim is None:
            self.dim = dim
        if dim != self.dim:
            raise ValueError(f"vectors have dimension {dim}, this index holds {self.dim}-d vectors")
        if self._index is None:
            self._index = self._new_flat()
        return self._index

    # -- contract ----------------------------------------------------------------------------
    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Add (or replace, for a key already present) L2-normalised ``float32 [N, D]`` vectors."""
        vectors = np.ascontiguousarray(np.asarray(vectors, np.float32).reshape(len(keys), -1))
        if len(keys) == 0:
            return
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate keys in one add()")
        index = self._ensure(vectors.shape[1])
        self.remove([k for k in keys if k in self._ids])
        ids = np.arange(self._next_id, self._next_id + len(keys), dtype=np.int64)
        self._next_id += len(keys)
        for key, i in zip(keys, ids.tolist()):
            self._ids[key] = i
            self._keys[i] = key
        index.add_with_ids(vectors, ids)
        self._gpu_dirty = True
        self._maybe_rebuild()

    def remove(self, keys: Sequence[str]) -> None:
        """Drop ``keys``; unknown keys are ignored."""
        ids = [self._ids.pop(k) for k in keys if k in self._ids]
        if not ids or self._index is None:  # no key is known before the first add
            return
        for i in ids:
            del self._keys[i]
        self._index.remove_ids(np.asarray(ids, np.int64))
        self._gpu_dirty = True

    def search(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        """Top-``k`` keys per query by inner product (cosine), best first; an empty index gives ``[]`` each."""
        queries = np.ascontiguousarray(np.asarray(queries, np.float32))
        if queries.ndim == 1:
            queries = queries[None]
        if len(self) == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, this index holds {self.dim}-d vectors")
        scores, ids = self._searcher().search(queries, min(k, len(self)))
        return [
            [Match(self._keys[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0 and i in self._keys]
            for row_s, row_i in zip(scores, ids)
        ]

    # -- exact <-> IVF -------------------------------------------------------------------------
    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        assert self._index is not None  # only a built index is rebuilt (_maybe_rebuild)
        ids = np.fromiter(self._keys, np.int64, len(self._keys))
        return self._index.reconstruct_batch(ids), ids

    def _maybe_rebuild(self) -> None:
        n = len(self)
        if self.kind == "flat" and n > self.settings.exact_max:
            self._build_ivf()
        elif self.kind == "ivf" and n > self._trained_size * self.settings.retrain_growth:
            self._build_ivf()

    def _nlist(self, n: int) -> int:
        if self.settings.nlist:
            return min(self.settings.nlist, n)
        return int(min(65536, max(16, 4 * math.sqrt(n))))

    def _build_ivf(self) -> None:
        """Train an IVF on the current gallery and move every vector into it."""
        faiss = _faiss()
        vectors, ids = self._all_vectors()
        n = len(ids)
        nlist = self._nlist(n)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(n, min(n, self.settings.train_sample, nlist * TRAIN_PER_LIST), replace=False)]
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(sample)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct() + remove_ids() by id
        ivf.add_with_ids(vectors, ids)
        ivf.nprobe = self.settings.nprobe
        self._quantizer = quantizer  # keep the Python reference alive with the index
        self._index, self._trained_size, self._gpu_dirty = ivf, n, True
        log.info("faiss index rebuilt as IVF: %d vectors, nlist=%d, nprobe=%d", n, nlist, ivf.nprobe)

    # -- GPU --------------------------------------------------------------------------------
    def _searcher(self):
        faiss = _faiss()
        use_gpu = self.settings.device != "cpu" and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
        if not use_gpu:
            return self._index
        if self._gpu_dirty:
            try:
                self._gpu_res = getattr(self, "_gpu_res", None) or faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._index)
            except Exception as exc:  # noqa: BLE001 - not every index type has a GPU twin
                log.warning("faiss GPU copy failed (%s); searching on the CPU", exc)
                self._gpu_index = None
            self._gpu_dirty = False
        return self._gpu_index or self._index
