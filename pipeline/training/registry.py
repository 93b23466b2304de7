"""Versioned model registry: one folder per version on disk, mirrored into Redis, with atomic promotion.

Layout under ``cfg.path(cfg.registry.directory)``::

    v0001/  model.onnx  checkpoint.pt  config.json  metrics.json  manifest.json  [model_fp16.onnx ...]
            [calibration.json]
    v0002/  ...
    production.json     {"version", "onnx", "embedding_dim", "history": [older production versions]}

Crash safety, the two rules everything else follows from:

* a version folder is built under ``.staging-*`` and renamed into place only once its files and,
  last, ``manifest.json`` (file sizes and SHA-256) are fsynced, so ``vNNNN/`` is complete or absent;
* ``production.json`` is the source of truth for what serves and is replaced atomically (temp file,
  fsync, ``os.replace``); Redis is a mirror written *after* it. A crash at any point leaves the
  old or the new production model, never half of one, and :meth:`ModelRegistry.repair` (run on
  open) re-syncs Redis, deletes staging leftovers, ignores folders without a valid manifest and
  falls back to the newest earlier production version whose files exist.

Redis (prefix ``P`` = ``cfg.pool.prefix``): ``P:models:index`` hash ``version -> manifest JSON``
(with ``status``); ``P:models:production`` = ``{"version", "onnx", "embedding_dim"}``; every
promotion or rollback PUBLISHes the same JSON on ``P:models:promoted`` (the key serves late joiners).

**Association calibration.** Each version carries the label-free calibration of its matcher
threshold (:class:`~selfreid.reid_model.calibration.AssociationCalibration`, fitted on the held-out
pool when the version was gated): in its manifest (``"calibration"``), and in every ``.onnx`` file's
``metadata_props`` under :data:`~selfreid.reid_model.calibration.CALIBRATION_METADATA_KEY` (written
before the files are hashed), so a model file copied elsewhere still knows its threshold. A version
registered without one (version 1 on a site whose pool was empty) is calibrated later by
:meth:`ModelRegistry.calibrate`, which writes ``calibration.json`` beside the frozen files (the
manifest and the hashed ONNX stay untouched). ``record()`` (the Redis index entry the matcher reads at
hot swap) carries whichever exists.

Versions are decimal strings ("1", "2", ...); a version's status is derived, never stored in its
folder: ``production``, ``retired`` (served before), ``candidate`` (passed the gate, not promoted)
or ``rejected`` (gate failed; kept for inspection, refused by ``promote`` unless forced).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from selfreid.reid_model.calibration import CALIBRATION_METADATA_KEY, AssociationCalibration, CalibrationError
from selfreid.reid_model.export import atomic_write_bytes, fsync_dir, set_metadata

if TYPE_CHECKING:
    from selfreid.pipeline.config import AppConfig

__all__ = [
    "RegistryError",
    "ModelVersion",
    "ModelRegistry",
    "open_registry",
    "verify_file",
    "register_checkpoint",
    "slim_checkpoint",
    "normalise_version",
    "production_key",
    "index_key",
    "promoted_channel",
    "write_onnx_metadata",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PRODUCTION = "production.json"
STAGING_PREFIX = ".staging-"
ONNX_NAME = "model.onnx"
CALIBRATION_FILE = "calibration.json"
CHECKPOINT_NAME = "checkpoint.pt"
MANIFEST_FORMAT = "selfreid-model/1"
TRAINING_STATE = ("optimizer", "banks", "rng", "step")


class RegistryError(RuntimeError):
    """An unknown version, a refused promotion or an unusable registry folder."""


def production_key(prefix: str) -> str:
    return f"{prefix}:models:production"


def index_key(prefix: str) -> str:
    return f"{prefix}:models:index"


def promoted_channel(prefix: str) -> str:
    return f"{prefix}:models:promoted"


def _folder_name(version: str) -> str:
    return f"v{int(version):04d}"


def normalise_version(text: str) -> str:
    """``"v2"``, ``"0002"`` or ``"2"`` -> ``"2"``; anything else is a RegistryError."""
    digits = text.strip().lower().removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise RegistryError(f"not a model version: {text!r} (expected a number such as 2 or v2)")
    return str(int(digits))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | Path) -> None:
    """Check a registered file against the SHA-256 in its version's ``manifest.json`` (same folder).

    Servers call it before loading a promoted model: a file damaged on disk since its promotion may
    still parse as ONNX and would serve wrong embeddings. A file that is not in a version folder (no
    manifest beside it: a fixed model, a hand-made pointer) has nothing to be checked against.
    """
    path = Path(path)
    if not (path.parent / MANIFEST).is_file():
        return
    try:
        manifest = json.loads((path.parent / MANIFEST).read_text())
        expected = manifest["files"][path.name]["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{path}: its {MANIFEST} is unreadable or does not list it ({exc!r})") from None
    if _sha256(path) != expected:
        raise RegistryError(f"model version {manifest.get('version')}: {path.name} does not match its manifest "
                            f"checksum ({path})")


def _copy_durable(source: Path, target: Path) -> None:
    """Copy and fsync (the staging folder's rename makes the set of files appear at once)."""
    shutil.copyfile(source, target)
    with target.open("rb+") as fh:
        os.fsync(fh.fileno())


def _write_json(path: Path, data: Any) -> None:
    """Atomically; a disk error (full, quota, permissions) is a RegistryError naming the file, and the
    old file stays as it was."""
    try:
        atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True).encode())
    except OSError as exc:
        raise RegistryError(f"cannot write {path}: {exc.strerror or exc}; nothing was changed") from None


def write_onnx_metadata(path: str | Path, entries: Mapping[str, str]) -> Path:
    """Set ``metadata_props`` entries of an ONNX file in place (atomically); other entries are kept."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    set_metadata(proto, entries)
    return atomic_write_bytes(path, proto.SerializeToString())


def _read_late_calibration(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / CALIBRATION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as read from its manifest."""

    version: str
    folder: Path
    manifest: dict[str, Any]
    status: str = "candidate"
    late_calibration: dict[str, Any] | None = None  # calibration.json, written after registration

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX_NAME

    @property
    def checkpoint(self) -> Path | None:
        path = self.folder / CHECKPOINT_NAME
        return path if CHECKPOINT_NAME in self.manifest.get("files", {}) else None

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def gate(self) -> dict[str, Any]:
        return self.manifest.get("gate") or {}

    @property
    def rejected(self) -> bool:
        return self.gate.get("passed") is False

    @property
    def calibration(self) -> AssociationCalibration | None:
        """The version's association calibration (manifest, else ``calibration.json``), or None."""
        data = self.manifest.get("calibration") or self.late_calibration
        try:
            return AssociationCalibration.from_dict(data) if data else None
        except CalibrationError:
            log.warning("model version %s: unreadable calibration record ignored", self.version)
            return None

    def pointer(self) -> dict[str, Any]:
        """The production pointer JSON (Redis key and pub/sub message)."""
        return {"version": self.version, "onnx": str(self.onnx.resolve()), "embedding_dim": self.embedding_dim}

    def record(self) -> dict[str, Any]:
        """The Redis index entry: the manifest plus the derived status and the absolute ONNX path."""
        calibration = self.calibration
        return {**self.manifest, "status": self.status, "onnx": str(self.onnx.resolve()),
                "calibration": calibration.to_dict() if calibration else None}


@dataclass
class _Production:
    version: str | None = None
    history: list[str] = field(default_factory=list)


class ModelRegistry:
    """The registry folder plus its Redis mirror (``client`` may be None: disk only).

    Example:
        >>> reg = ModelRegistry(Path(".selfreid/models"), client, "selfreid")  # doctest: +SKIP
        >>> v = reg.register({"model.onnx": onnx, "checkpoint.pt": ckpt}, embedding_dim=4096)  # doctest: +SKIP
        >>> reg.promote(v.version)  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, client: redis.Redis | None = None, prefix: str = "selfreid",
                 before_switch: Callable[[ModelVersion], None] | None = None) -> None:
        self.root = Path(root)
        self.client = client
        self.prefix = prefix
        self.before_switch = before_switch  # runs before a version change is written (the backfill, blue/green)
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ reading
    def _read_manifest(self, folder: Path) -> dict[str, Any] | None:
        """The manifest if the folder is a complete version (every listed file has its size), else None."""
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            files = manifest["files"]
            complete = all((folder / name).stat().st_size == meta["size"] for name, meta in files.items())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        ok = manifest.get("format") == MANIFEST_FORMAT and ONNX_NAME in files and complete
        return manifest if ok and folder.name == _folder_name(manifest["version"]) else None

    def _read_production(self) -> _Production:
        try:
            data = json.loads((self.root / PRODUCTION).read_text())
            return _Production(data.get("version"), list(data.get("history", [])))
        except (OSError, ValueError):
            return _Production()

    def _status(self, manifest: dict[str, Any], prod: _Production) -> str:
        version = manifest["version"]
        if version == prod.version:
            return "production"
        if version in prod.history:
            return "retired"
        return "rejected" if (manifest.get("gate") or {}).get("passed") is False else "candidate"

    def versions(self) -> list[ModelVersion]:
        """Every complete version, oldest first (incomplete folders are skipped)."""
        prod = self._read_production()
        out = []
        for folder in sorted(self.root.glob("v[0-9]*")):
            manifest = self._read_manifest(folder) if folder.is_dir() else None
            if manifest is not None:
                out.append(ModelVersion(manifest["version"], folder, manifest, self._status(manifest, prod),
                                        _read_late_calibration(folder)))
        return sorted(out, key=lambda v: int(v.version))

    def get(self, version: str) -> ModelVersion:
        version = normalise_version(version)
        for v in self.versions():
            if v.version == version:
                return v
        raise RegistryError(f"model version {version} is not in the registry {self.root}")

    def production(self) -> ModelVersion | None:
        """The version that serves now, or None before the first promotion."""
        name = self._read_production().version
        return next((v for v in self.versions() if v.version == name), None) if name else None

    def next_version(self) -> str:
        """One above every version ever used (complete or not), so numbers are never reused."""
        used = [int(p.name[1:]) for p in self.root.glob("v[0-9]*") if p.name[1:].isdigit()]
        return str(max(used, default=0) + 1)

    # ------------------------------------------------------------------ writing
    def register(self, files: Mapping[str, str | Path], *, embedding_dim: int, parent: str | None = None,
                 config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                 gate: dict[str, Any] | None = None, version: str | None = None,
                 extra: dict[str, Any] | None = None,
                 calibration: AssociationCalibration | dict[str, Any] | None = None) -> ModelVersion:
        """Copy ``files`` (name in the folder -> source path; must include ``model.onnx``) into a new
        version folder, atomically: staging folder, fsync, manifest last, rename. A failed write (disk
        full, quota, permissions) is a :class:`RegistryError` naming the file, and leaves nothing behind.

        ``calibration`` (the version's label-free association calibration) goes into the manifest and
        into every ``.onnx`` file's metadata before the files are hashed."""
        if ONNX_NAME not in files:
            raise RegistryError(f"a model version needs {ONNX_NAME}")
        version = normalise_version(version) if version else self.next_version()
        final = self.root / _folder_name(version)
        if final.exists():
            raise RegistryError(f"model version {version} already exists at {final}")
        staging = self.root / f"{STAGING_PREFIX}{_folder_name(version)}-{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
            if isinstance(calibration, dict):
                calibration = AssociationCalibration.from_dict(calibration)
            manifest = self._stage(staging, files, version, embedding_dim, parent, config, metrics, gate,
                                   {**(extra or {}), "calibration": calibration.to_dict() if calibration else None})
            staging.rename(final)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise RegistryError(
                    f"model version {version} was not registered: writing to {self.root} failed: {exc}"
                ) from exc
            raise
        fsync_dir(self.root)
        registered = ModelVersion(version, final, manifest, self._status(manifest, self._read_production()))
        self._mirror_index([registered])
        log.info("registered model version %s at %s", version, final)
        return registered

    def _stage(self, staging: Path, files: Mapping[str, str | Path], version: str, embedding_dim: int,
               parent: str | None, config: dict | None, metrics: dict | None, gate: dict | None,
               extra: dict | None) -> dict[str, Any]:
        calibration = (extra or {}).get("calibration")
        for name, source in files.items():
            _copy_durable(Path(source), staging / name)
            if calibration and name.endswith(".onnx"):
                write_onnx_metadata(staging / name, {CALIBRATION_METADATA_KEY: json.dumps(calibration, sort_keys=True)})
        _write_json(staging / "config.json", config or {})
        _write_json(staging / "metrics.json", metrics or {})
        names = [*files, "config.json", "metrics.json"]
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": version,
            "parent": parent,
            "created": time.time(),
            "embedding_dim": int(embedding_dim),
            "metrics": metrics or {},
            "gate": gate,
            "files": {n: {"size": (staging / n).stat().st_size, "sha256": _sha256(staging / n)} for n in names},
            **(extra or {}),
        }
        _write_json(staging / MANIFEST, manifest)
        return manifest

    def verify(self, version: ModelVersion) -> None:
        """Check every file's SHA-256 against the manifest (done before promoting)."""
        for name in version.manifest["files"]:
            verify_file(version.folder / name)

    def calibrate(self, version: str, calibration: AssociationCalibration) -> ModelVersion:
        """Give a version registered without a calibration its first one (``calibration.json``,
        atomic) and mirror it; a version that has one keeps it (RegistryError), since its ONNX metadata
        and the decisions made with it must stay consistent."""
        target = self.get(version)
        if target.calibration is not None:
            raise RegistryError(f"model version {target.version} is calibrated already "
                                f"(threshold {target.calibration.threshold:.4f})")
        _write_json(target.folder / CALIBRATION_FILE, calibration.to_dict())
        updated = ModelVersion(target.version, target.folder, target.manifest, target.status, calibration.to_dict())
        self._mirror_index([updated])
        log.info("model version %s calibrated: threshold %.4f", target.version, calibration.threshold)
        return updated

    def promote(self, version: str, *, force: bool = False) -> ModelVersion:
        """Make ``version`` the production model: verify, write ``production.json`` atomically, then
        mirror to Redis and publish. A gate-rejected version needs ``force``."""
        target = self.get(version)
        if target.rejected and not force:
            raise RegistryError(
                f"model version {target.version} was rejected by the gate ({target.gate.get('reason', 'no reason')}); "
                "use --force to promote it anyway"
            )
        self.verify(target)
        prod = self._read_production()
        history = [v for v in prod.history if v != target.version]
        if prod.version and prod.version != target.version:
            history.append(prod.version)
        return self._set_production(target, history)

    def rollback(self) -> ModelVersion:
        """Serve the previous production version again (the newest one in the history that still exists)."""
        prod = self._read_production()
        available = {v.version: v for v in self.versions()}
        history = list(prod.history)
        while history:
            candidate = history.pop()
            if candidate in available:
                return self._set_production(available[candidate], history)
        raise RegistryError("nothing to roll back to: no earlier production version is in the registry")

    def _set_production(self, target: ModelVersion, history: list[str]) -> ModelVersion:
        if self.before_switch is not None and target.version != self._read_production().version:
            self.before_switch(target)
        pointer = target.pointer()
        _write_json(self.root / PRODUCTION, {**pointer, "history": history, "promoted": time.time()})
        promoted = ModelVersion(target.version, target.folder, target.manifest, "production", target.late_calibration)
        self._mirror_production(pointer)
        self._mirror_index(self.versions())
        if self.client is not None:
            self.client.publish(promoted_channel(self.prefix), json.dumps(pointer))
        log.info("model version %s is now in production", target.version)
        return promoted

    # ------------------------------------------------------------------ Redis mirror
    def _mirror_production(self, pointer: dict[str, Any] | None) -> None:
        if self.client is None:
            return
        if pointer is None:
            self.client.delete(production_key(self.prefix))
        else:
            self.client.set(production_key(self.prefix), json.dumps(pointer))

    def _mirror_index(self, versions: list[ModelVersion], replace: bool = False) -> None:
        if self.client is None:
            return
        pipe = self.client.pipeline(transaction=True)
        if replace:
            pipe.delete(index_key(self.prefix))
        if versions:
            pipe.hset(index_key(self.prefix), mapping={v.version: json.dumps(v.record()) for v in versions})
        pipe.execute()

    # ------------------------------------------------------------------ repair
    def repair(self) -> list[str]:
        """Bring the folder and Redis back to a consistent state after a crash; returns what it did."""
        actions = []
        for staging in self.root.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(staging, ignore_errors=True)
            actions.append(f"removed unfinished {staging.name}")
        for folder in sorted(self.root.glob("v[0-9]*")):
            if folder.is_dir() and self._read_manifest(folder) is None:
                actions.append(f"ignored {folder.name}: no complete manifest")
        versions = {v.version: v for v in self.versions()}
        prod = self._read_production()
        if prod.version and prod.version not in versions:
            fallback = next((v for v in reversed(prod.history) if v in versions), None)
            actions.append(f"production version {prod.version} is missing; falling back to {fallback or 'none'}")
            if fallback:
                self._set_production(versions[fallback], prod.history[: prod.history.index(fallback)])
            else:
                (self.root / PRODUCTION).unlink(missing_ok=True)
        current = self.production()
        self._mirror_production(current.pointer() if current else None)
        self._mirror_index(self.versions(), replace=True)
        for action in actions:
            log.warning("model registry %s: %s", self.root, action)
        return actions


def open_registry(cfg: AppConfig, client: redis.Redis | None) -> ModelRegistry:
    """The site's registry (``cfg.path(cfg.registry.directory)``), repaired and mirrored into Redis.

    With Redis, a promotion or rollback first rebuilds the new version's gallery from the pool
    (:func:`~selfreid.pipeline.serving.backfill.backfill_hook`; blue/green, docs/backfill.md)."""
    from selfreid.pipeline.serving.backfill import backfill_hook  # imports this module: not at the top

    hook = backfill_hook(cfg, client, cfg.registry.backfill) if client is not None else None
    registry = ModelRegistry(cfg.path(cfg.registry.directory), client, cfg.pool.prefix, before_switch=hook)
    registry.repair()
    return registry


def slim_checkpoint(source: str | Path, target: str | Path) -> Path:
    """A copy of a training checkpoint without its training state (optimiser, banks, RNG; see
    :mod:`selfreid.reid_model.checkpoint`): what serving and the next cycle's warm start need. The
    banks alone are ~24 KB per training crop."""
    import torch

    from selfreid.reid_model.checkpoint import read_checkpoint

    state = {k: v for k, v in read_checkpoint(source).items() if k not in TRAINING_STATE}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(target, buffer.getvalue())


def register_checkpoint(registry: ModelRegistry, checkpoint: str | Path, export_cfg, crops: list,
                        parent: str | None = None, metrics: dict[str, Any] | None = None,
                        calibrate: Callable[[Path], AssociationCalibration | None] | None = None) -> ModelVersion:
    """Export a trained checkpoint (FP32 plus the configured variants), parity-check it on ``crops``
    (real BGR images) and register it as the next version. No gate runs here: the caller decides
    (``selfreid models export`` is an operator's explicit choice; the service gates its own).
    ``calibrate(onnx_path)`` may return the exported model's association calibration (e.g. fitted on
    the pool), stored with the version."""
    import tempfile

    from selfreid.reid_model.checkpoint import load_model, read_checkpoint
    from selfreid.reid_model.export import export_bundle

    model, train_cfg = load_model(checkpoint)
    version = registry.next_version()
    with tempfile.TemporaryDirectory(dir=registry.root, prefix=STAGING_PREFIX) as tmp:
        bundle = export_bundle(model, tmp, version, crops, opset=export_cfg.opset,
                               min_cosine=export_cfg.parity_min_cosine, exporter=export_cfg.exporter,
                               slim=export_cfg.slim, fp16=export_cfg.fp16, int8=export_cfg.int8,
                               variant_min_cosine=export_cfg.variant_min_cosine)
        files = {**bundle.files, CHECKPOINT_NAME: slim_checkpoint(checkpoint, Path(tmp) / CHECKPOINT_NAME)}
        calibration = calibrate(Path(bundle.files[ONNX_NAME])) if calibrate else None
        return registry.register(files, embedding_dim=bundle.embedding_dim, parent=parent, version=version,
                                 calibration=calibration,
                                 config=train_cfg.model_dump(mode="json"),
                                 metrics={"parity": bundle.parity, **(metrics or {})},
                                 extra={"source": str(checkpoint), "epoch": int(read_checkpoint(checkpoint)["epoch"])})
