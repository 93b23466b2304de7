"""Stage contracts: one ``typing.Protocol`` per stage and the small value objects they exchange.

Every built-in or third-party implementation satisfies one of these protocols and is
registered under the matching entry-point group (see :mod:`selfreid.plugins.registry`).
Units are fixed here once so that no stage has to guess:

* images are ``uint8`` ``H x W x 3`` numpy arrays in **BGR** order (OpenCV's order);
* boxes are ``(x1, y1, x2, y2)`` floats in pixels of the full frame;
* timestamps are seconds since the Unix epoch (wall clock at capture, or the
  file's position added to the ingest start for recorded video);
* embeddings are ``float32 [D]`` vectors with unit L2 norm, tagged with the model version
  that produced them: vectors of different versions are never compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Box",
    "Frame",
    "Detection",
    "Crop",
    "Embedding",
    "Match",
    "Assignment",
    "SourceState",
    "Source",
    "Detector",
    "Tracker",
    "PoolStore",
    "Embedder",
    "Index",
    "Matcher",
    "Trainer",
    "TrainResult",
]

Box = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in pixels."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame of one camera."""

    camera_id: str
    index: int
    timestamp: float
    image: np.ndarray  # uint8 HxWx3 BGR


@dataclass(frozen=True, slots=True)
class Detection:
    """One person box in one frame; ``track_id`` is set by the tracker (None before)."""

    box: Box
    confidence: float
    track_id: int | None = None


@dataclass(frozen=True, slots=True)
class Crop:
    """A person crop with the metadata the pool keeps.

    ``crop_id`` is the pool's id for the entry (the Redis stream id); it is ``None``
    until the crop has been stored.
    """

    camera_id: str
    timestamp: float
    frame_index: int
    box: Box
    track_id: int
    confidence: float
    jpeg: bytes
    crop_id: str | None = None


@dataclass(frozen=True, slots=True)
class Embedding:
    """An L2-normalised ``float32 [D]`` feature of one crop, tagged with its model version."""

    crop_id: str
    camera_id: str
    timestamp: float
    track_id: int
    vector: np.ndarray
    model_version: str
    quality: float = 1.0  # additive: crop quality (detector confidence) for weighted tracklet features


@dataclass(frozen=True, slots=True)
class Match:
    """One search hit: ``key`` is what the index stored, ``score`` the inner product (cosine)."""

    key: str
    score: float


@dataclass(frozen=True, slots=True)
class Assignment:
    """The global identity given to one tracklet by the matcher."""

    camera_id: str
    track_id: int
    global_id: int
    score: float
    is_new: bool
    model_version: str


class SourceState:
    """States a source reports (plain strings so that metrics and Redis can store them)."""

    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FINISHED = "finished"
    FAILED = "failed"


@runtime_checkable
class Source(Protocol):
    """A camera: yields frames until exhausted (files) or closed (live streams).

    Live sources reconnect by themselves with backoff and expose ``state`` and
    ``reconnects``; they never raise out of ``frames()`` for a transient failure.
    """

    camera_id: str

    @property
    def state(self) -> str: ...

    @property
    def reconnects(self) -> int: ...

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


@runtime_checkable
class Detector(Protocol):
    """Person detector. ``detect(images)`` takes a batch (one image per camera) and
    returns, per image, the person boxes above the configured confidence."""

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]: ...


@runtime_checkable
class Tracker(Protocol):
    """Per-camera multi-object tracker: returns the confirmed tracks of this frame,
    each ``Detection`` carrying a ``track_id`` that is stable within the camera."""

    def update(self, frame: Frame, detections: Sequence[Detection]) -> list[Detection]: ...


@runtime_checkable
class PoolStore(Protocol):
    """The unlabelled crop pool.

    ``add`` stores crops and returns their ids (in order); consumers read through named
    groups and acknowledge, so the embedder and the trainer progress independently.
    ``ack(..., pipe=p)`` only queues the acknowledgements on the caller's Redis pipeline ``p``
    (returning 0), for a transaction that also holds the writes that make them true.
    ``snapshot`` is the trainer's view: up to ``max_crops``, balanced over cameras,
    from the last ``since_s`` seconds.

    Privacy: ``retention_s`` is how long a crop is kept (``None`` = no age limit) and ``expire``
    deletes older ones; ``erase`` deletes the crops of one camera that ``select`` picks
    (``selfreid forget``). Both return how many crops they deleted.
    """

    def add(self, crops: Sequence[Crop]) -> list[str]: ...

    def read(self, group: str, consumer: str, count: int, block_ms: int = 0) -> list[Crop]: ...

    def ack(self, group: str, crop_ids: Sequence[str], pipe: object | None = None) -> int: ...

    def snapshot(self, max_crops: int, since_s: float | None = None) -> list[Crop]: ...

    def count(self) -> int: ...

    @property
    def retention_s(self) -> float | None: ...

    def expire(self) -> int: ...

    def erase(self, camera_id: str, select: Callable[[Crop], bool]) -> int: ...


@runtime_checkable
class Embedder(Protocol):
    """Crops in, ``float32 [N, dim]`` L2-normalised features out."""

    @property
    def model_version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


@runtime_checkable
class Index(Protocol):
    """Inner-product nearest-neighbour index over L2-normalised vectors."""

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> list[list[Match]]: ...

    def remove(self, keys: Sequence[str]) -> None: ...

    def __len__(self) -> int: ...


@runtime_checkable
class Matcher(Protocol):
    """Turns embeddings into global identities across cameras."""

    def update(self, embeddings: Sequence[Embedding]) -> list[Assignment]: ...


@dataclass(slots=True)
class TrainResult:
    """What one training run produced: a checkpoint path and its measured numbers."""

    checkpoint: str
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """Adapts a model on unlabelled crops (``group`` keys such as camera/track are optional)."""

    def fit(
        self,
        images: Sequence[np.ndarray],
        camera_ids: Sequence[int],
        groups: Sequence[str] | None,
        init_checkpoint: str | None,
        out_dir: str,
    ) -> TrainResult: ...
