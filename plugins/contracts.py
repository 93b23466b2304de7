"""Stage contracts: one ``typing.Protocol`` per stage and the small value objects they exchange.

Every built-in or third-party implementation satisfies one of these protocols and is
registered under the matching entry-point group (see :mod:`selfreid.plugins.registry`). A protocol
lists every member the pipeline uses, and the registry checks a plugin against it when building it
(naming what is missing), so the pipeline calls members directly and never probes for them. Where a
member has a natural default, the stage's base class gives it (:class:`SourceBase`,
:class:`EmbedderBase`, :class:`MatcherBase`): a plugin subclasses it and writes only the core.
Units are fixed here once so that no stage has to guess:

* images are ``uint8`` ``H x W x 3`` numpy arrays in **BGR** order (OpenCV's order);
* boxes are ``(x1, y1, x2, y2)`` floats in pixels of the full frame;
* timestamps are seconds since the Unix epoch: capture time for live streams, media time for
  recordings (see :class:`Frame`);
* embeddings are ``float32 [D]`` vectors with unit L2 norm, tagged with the model version
  that produced them: vectors of different versions are never compared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from selfreid.reid_model.calibration import AssociationCalibration

if TYPE_CHECKING:
    import redis

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
    "SourceBase",
    "Detector",
    "Tracker",
    "PoolWriteStats",
    "PoolStore",
    "Embedder",
    "EmbedderBase",
    "Index",
    "Matcher",
    "MatcherBase",
    "Trainer",
    "TrainResult",
]

Box = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in pixels."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame of one camera.

    ``timestamp`` (Unix seconds) is the **capture time** (wall clock when the frame was read) for a
    live stream, and the **media time** for recorded media (files, image folders, GStreamer with
    ``live: false``): the frame's position in the recording plus ``camera.start_time``, or, without
    one, plus the time ingest started reading it (the source's ``media_origin``).
    """

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

    ``timestamp`` and ``frame_index`` are those of its :class:`Frame` (capture time for live streams,
    media time for recordings). ``crop_id`` is the pool's id for the entry (the Redis stream id); it
    is ``None`` until the crop has been stored.
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

    Built as ``cls(settings, camera=CameraConfig)``. Live sources (``live`` true: ingest drops
    their oldest frame when detection falls behind, where recorded media waits) reconnect by
    themselves with backoff and count it in ``reconnects``; no source raises out of ``frames()``
    for a transient failure. ``counters`` are problem counts shown in the status and metrics
    (the built-in keys ``corrupt``, ``oversize_rejected``, ``oversize_downscaled`` become metrics);
    ``last_error`` is the latest problem in words (``None``: none). ``media_origin`` is the Unix time
    of media time 0 of recorded media once ``frames()`` started (``None`` for live streams and
    before): ingest records it, so that a timestamp can be shown as a position in the recording.
    :class:`SourceBase` gives the defaults of a source that never reconnects.
    """

    camera_id: str

    @property
    def state(self) -> str: ...

    @property
    def reconnects(self) -> int: ...

    @property
    def live(self) -> bool: ...

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def media_origin(self) -> float | None: ...

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class SourceBase(ABC):
    """Defaults for a :class:`Source` of recorded media that never reconnects: ``state`` running,
    no problem counters, no known ``media_origin``, ``close`` a no-op. Subclasses set ``camera_id``
    and implement ``frames``."""

    camera_id: str
    state: str = SourceState.RUNNING
    reconnects: int = 0
    live: bool = False
    counters: Mapping[str, int] = MappingProxyType({})
    last_error: str | None = None
    media_origin: float | None = None

    @abstractmethod
    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None:  # noqa: B027 - an optional default, not an abstract member
        """Nothing to release."""


@runtime_checkable
class Detector(Protocol):
    """Person detector, built as ``cls(settings, device="auto"|"cpu"|"cuda:N")``. ``detect(images)``
    takes a batch (one image per camera) and returns, per image, the person boxes above the
    configured confidence."""

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]: ...


@runtime_checkable
class Tracker(Protocol):
    """Per-camera multi-object tracker, built as ``cls(settings, frame_rate=fps)`` (one per camera):
    returns the confirmed tracks of this frame, each ``Detection`` carrying a ``track_id`` that is
    stable within the camera."""

    def update(self, frame: Frame, detections: Sequence[Detection]) -> list[Detection]: ...


@runtime_checkable
class PoolWriteStats(Protocol):
    """Counters of a pool's write path (ingest's status and metrics)."""

    @property
    def queued(self) -> int: ...

    @property
    def written(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def connected(self) -> bool: ...

    @property
    def last_error(self) -> str: ...

    @property
    def written_by_camera(self) -> Mapping[str, int]: ...

    @property
    def dropped_by_camera(self) -> Mapping[str, int]: ...


@runtime_checkable
class PoolStore(Protocol):
    """The unlabelled crop pool, built as ``cls(settings, client=redis.Redis, prefix=site_prefix)``.

    **Write path (ingest).** ``enqueue`` queues crops locally and never blocks; ``flush`` writes the
    queue (retrying for up to ``timeout_s`` while Redis is down) and returns what it wrote;
    ``drop_queued`` discards what could not be written and returns how many; ``stats`` counts it all.
    ``add`` stores crops at once and returns their ids (in order).

    **Read path.** Consumers read through named groups and acknowledge, so the embedder and the
    trainer progress independently. ``ack(..., pipe=p)`` only queues the acknowledgements on the
    caller's Redis pipeline ``p`` (returning 0), for a transaction that also holds the writes that
    make them true. ``pending(group)`` counts delivered, unacknowledged crops. ``snapshot`` is the
    trainer's view: up to ``max_crops``, balanced over cameras, from the last ``since_s`` seconds.

    **Inspection.** Each camera's crops are one Redis stream on ``client``, ``stream_key(camera_id)``,
    over the ``cameras()`` seen so far; ``count`` and ``count_by_camera`` are what they hold.

    **Privacy.** ``retention_s`` is how long a crop is kept (``None`` = no age limit) and ``expire``
    deletes older ones; ``erase`` deletes the crops of one camera that ``select`` picks
    (``selfreid forget``). Both return how many crops they deleted.
    """

    @property
    def client(self) -> redis.Redis: ...

    @property
    def stats(self) -> PoolWriteStats: ...

    def enqueue(self, crops: Iterable[Crop]) -> None: ...

    def flush(self, timeout_s: float = 0.0) -> Sequence[tuple[Crop, str]]: ...

    def drop_queued(self) -> int: ...

    def add(self, crops: Sequence[Crop]) -> list[str]: ...

    def read(self, group: str, consumer: str, count: int, block_ms: int = 0) -> list[Crop]: ...

    def ack(self, group: str, crop_ids: Sequence[str], pipe: Any | None = None) -> int: ...

    def pending(self, group: str) -> int: ...

    def snapshot(self, max_crops: int, since_s: float | None = None) -> list[Crop]: ...

    def cameras(self) -> list[str]: ...

    def stream_key(self, camera_id: str) -> str: ...

    def count(self) -> int: ...

    def count_by_camera(self) -> dict[str, int]: ...

    @property
    def retention_s(self) -> float | None: ...

    def expire(self) -> int: ...

    def erase(self, camera_id: str, select: Callable[[Crop], bool]) -> int: ...


@runtime_checkable
class Embedder(Protocol):
    """Crops in, ``float32 [N, dim]`` L2-normalised features out; built as ``cls(settings)``.

    ``embed_versioned`` also returns the version of the model that embedded this very batch (exact
    across a concurrent hot swap). An embedder that ``follows_registry`` starts without a model
    (``loaded`` false, ``model_version`` "" and ``dim`` 0) and is given each promoted version's ONNX
    file by ``load`` (between batches; a failure raises and leaves the previous model serving).
    ``provider`` names what runs the model (e.g. ``"CPUExecutionProvider"``; "" when unknown).
    :class:`EmbedderBase` gives the defaults of an embedder with a fixed model.
    """

    @property
    def model_version(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def provider(self) -> str: ...

    @property
    def loaded(self) -> bool: ...

    @property
    def follows_registry(self) -> bool: ...

    def load(self, onnx_path: str) -> object: ...

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def embed_versioned(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, str]: ...


class EmbedderBase(ABC):
    """Defaults for an :class:`Embedder` with a fixed model (it never follows the registry).
    Subclasses set ``model_version`` and ``dim`` and implement ``embed``."""

    model_version: str
    dim: int
    provider: str = ""
    loaded: bool = True
    follows_registry: bool = False

    @abstractmethod
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def embed_versioned(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, str]:
        """The fixed model's vectors and version."""
        return self.embed(images), self.model_version

    def load(self, onnx_path: str) -> object:
        """A fixed model is never replaced (the pipeline calls ``load`` only when ``follows_registry``)."""
        raise NotImplementedError(f"{type(self).__name__} has a fixed model and cannot load {onnx_path}")


@runtime_checkable
class Index(Protocol):
    """Inner-product nearest-neighbour index over L2-normalised vectors; built as ``cls(settings)``."""

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> list[list[Match]]: ...

    def remove(self, keys: Sequence[str]) -> None: ...

    def __len__(self) -> int: ...


@runtime_checkable
class Matcher(Protocol):
    """Turns embeddings into global identities across cameras.

    Built as ``cls(settings, client=redis.Redis, prefix=site_prefix, index_factory=make_index)``. It
    keeps its state in Redis with :class:`~selfreid.plugins.matchers.gallery_store.GalleryStore` (the
    layout that the search API, the report, the retention and ``selfreid forget`` read), so a new
    matcher on the same Redis continues where the last one stopped; ``selfreid forget`` bumps the
    gallery's epoch and the match service then builds a new matcher.

    * ``update`` takes embeddings in any order and returns the assignments it decided or changed;
      it never raises for a bad embedding, it counts it in ``rejected`` (reason -> count).
    * ``flush`` decides every tracklet still waiting for more crops (a clean stop, end of a recording).
    * ``prune()`` drops tracklets older than the matcher's own age limit on the data's clock;
      ``prune(now, max_age_s)`` is the privacy retention on the server clock. Returns how many it dropped.
    * ``tracklet_of(camera_id, track_id)`` is the key of the tracker id's open tracklet (the match
      service stores the latest crop under it as the thumbnail), ``None`` when unknown.
    * ``set_calibration(calibration, version)`` gives model ``version`` its label-free association
      calibration (at start and on each promotion); ``None`` forgets it. A threshold the user pinned
      in the matcher's settings still wins.
    * ``applying(entry_id)`` is a context manager: the gallery writes ``update`` makes inside it commit
      together with ``entry_id`` as the last applied embeddings entry, so a crash between the gallery
      update and the acknowledgement never applies an embedding twice. Without it (the base class)
      an embedding can be counted twice after such a crash.

    :class:`MatcherBase` gives the defaults of a matcher that decides at once and is not calibrated.
    """

    @property
    def rejected(self) -> Mapping[str, int]: ...

    def update(self, embeddings: Sequence[Embedding]) -> list[Assignment]: ...

    def flush(self) -> list[Assignment]: ...

    def prune(self, now: float | None = None, max_age_s: float | None = None) -> int: ...

    def tracklet_of(self, camera_id: str, track_id: int) -> str | None: ...

    def set_calibration(
        self, calibration: AssociationCalibration | None, version: str | None = None
    ) -> None: ...

    def applying(self, entry_id: str) -> AbstractContextManager[None]: ...


class MatcherBase(ABC):
    """Defaults for a :class:`Matcher` that decides every tracklet at once (``flush`` has nothing
    left), rejects nothing and ignores calibrations. ``update``, ``prune`` and ``tracklet_of`` are
    the subclass's: pruning is the privacy retention and cannot have a default."""

    rejected: Mapping[str, int] = MappingProxyType({})

    @abstractmethod
    def update(self, embeddings: Sequence[Embedding]) -> list[Assignment]: ...

    @abstractmethod
    def prune(self, now: float | None = None, max_age_s: float | None = None) -> int: ...

    @abstractmethod
    def tracklet_of(self, camera_id: str, track_id: int) -> str | None: ...

    def flush(self) -> list[Assignment]:
        """Nothing waits: every tracklet was decided by ``update``."""
        return []

    def set_calibration(  # noqa: B027 - an optional default, not an abstract member
        self, calibration: AssociationCalibration | None, version: str | None = None
    ) -> None:
        """This matcher keeps its own threshold."""

    def applying(self, entry_id: str) -> AbstractContextManager[None]:
        """No transaction: writes go to Redis as ``update`` makes them."""
        return nullcontext()


@dataclass(slots=True)
class TrainResult:
    """What one training run produced: a checkpoint path and its measured numbers."""

    checkpoint: str
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Trainer(Protocol):
    """Adapts a model on unlabelled crops.

    ``groups`` (optional) are per-crop tracklet keys (camera and tracker id) and ``times`` (optional)
    per-crop timestamps in seconds (media time for recordings, capture time for live cameras): the
    site mode uses them for same-tracklet positives and co-occurring (cannot-link) negatives.
    """

    def fit(
        self,
        images: Sequence[np.ndarray],
        camera_ids: Sequence[int],
        groups: Sequence[str] | None,
        init_checkpoint: str | None,
        out_dir: str,
        times: Sequence[float] | None = None,
    ) -> TrainResult: ...
