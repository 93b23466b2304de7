"""Live status of every stage, kept in Redis so that one view covers threads, processes and containers.

Each running stage instance calls :func:`publish_status` every few seconds; ``selfreid run`` and the
health checks read them back with :func:`read_status`. Keys: ``{prefix}:status:{stage}:{instance}``
(a hash of strings, with ``updated`` = Unix time of the last report).

The second half reads reports the way a person does (``selfreid run``'s live table): a stage's state
(a process that ended wins over its last report, a report that stopped coming is ``stale``), its
key numbers in words, one row per camera, and what a stage is loading before its first report.

Recorded cameras also leave the origin of their media time (``{prefix}:media:origins``), so that the
report can show a sighting both as a time of day and as a position in the recording.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from selfreid.plugins.codec import as_text

__all__ = ["publish_status", "read_status", "status_key", "report_age", "stage_state", "stage_numbers", "camera_rows",
           "stage_startup", "STALE_S", "media_origin_key", "record_media_origin", "media_origins", "media_position"]

STATUS_TTL_S = 60


def status_key(prefix: str, stage: str, instance: str = "0") -> str:
    return f"{prefix}:status:{stage}:{instance}"


def publish_status(client: redis.Redis, prefix: str, stage: str, fields: dict[str, Any], instance: str = "0") -> None:
    """Store ``fields`` (JSON-encoded values) for this stage instance; expires if the stage dies."""
    key = status_key(prefix, stage, instance)
    mapping: dict[FieldT, EncodableT] = {k: json.dumps(v, default=str) for k, v in fields.items()}
    mapping["updated"] = json.dumps(time.time())
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping=mapping)
    pipe.expire(key, STATUS_TTL_S)
    pipe.execute()


def read_status(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """``{"stage:instance": {field: value}}`` for every stage that reported in the last minute."""
    out: dict[str, dict[str, Any]] = {}
    for key in client.scan_iter(match=f"{prefix}:status:*", count=100):
        name = as_text(key).removeprefix(f"{prefix}:status:")
        out[name] = {as_text(k): json.loads(v) for k, v in client.hgetall(key).items()}
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- reading reports as people do
STALE_S = 15.0  # stages report every ~2 s: a report this old is from a stalled or dead process
FINAL_STATES = ("finished", "stopped")


def report_age(fields: dict[str, Any], now: float | None = None) -> float:
    """Seconds since this report was published."""
    now = time.time() if now is None else now
    return max(0.0, now - float(fields.get("updated", now)))


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _counted(counts: dict[str, Any] | None) -> str:
    """``{"corrupt_jpeg": 3, "embed_error": 0}`` -> ``"corrupt_jpeg 3"``."""
    return ", ".join(f"{k} {_num(v)}" for k, v in (counts or {}).items() if v)


def camera_state(camera: dict[str, Any]) -> str:
    return str(camera.get("state", "?"))


def stage_state(stage: str, fields: dict[str, Any] | None, process: str | None, now: float | None = None) -> str:
    """What a person should read as the stage's state: the process's own end (``finished``, ``stopped``,
    ``crashed (1)``) wins over its last report; ingest is ``finished`` once every camera is; a report
    older than :data:`STALE_S` is ``stale`` (its age is shown beside it); a running process without a report is ``starting``."""
    if process and process != "running":
        return process
    if not fields:
        return "starting" if process == "running" else "-"
    if report_age(fields, now) > STALE_S:
        return "stale"  # the process that wrote it stalled, or died (an earlier run's): it expires in a minute
    cameras = fields.get("cameras") or {}
    if stage == "ingest" and cameras and all(camera_state(c) in FINAL_STATES for c in cameras.values()):
        return "finished"
    return str(fields.get("state", "running"))


def _ingest(f: dict[str, Any]) -> str:
    cameras = list((f.get("cameras") or {}).values())
    states = Counter(camera_state(c) for c in cameras)
    pool = f.get("pool") or {}
    text = f"{len(cameras)} camera(s): " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    text += f"; pool: {_num(pool.get('written', 0))} written, {_num(pool.get('queued', 0))} queued"
    if pool.get("dropped"):
        text += f", {_num(pool['dropped'])} dropped"
    return text + ("" if pool.get("connected", True) else f"; Redis down: {pool.get('last_error', '')}")


def _embedder(f: dict[str, Any]) -> str:
    text = (f"model {f.get('model_version') or '-'}, {_num(f.get('embedded', 0))} crops embedded "
            f"in {_num(f.get('batches', 0))} batches")
    if f.get("last_batch_ms"):
        text += f" (last {_num(float(f['last_batch_ms']))} ms)"
    if rejected := _counted(f.get("rejected")):
        text += f"; rejected: {rejected}"
    return text


def _matcher(f: dict[str, Any]) -> str:
    text = (f"{_num(f.get('embeddings', 0))} embeddings, {_num(f.get('new_identities', 0))} new identities, "
            f"{_num(f.get('assignments', 0))} assignments")
    if rejected := _counted(f.get("rejected")):
        text += f"; rejected: {rejected}"
    return text


def _backfill(f: dict[str, Any]) -> str:
    return (f"version {f.get('version', '?')}: {_num(float(f.get('done_pct', 0)))}% of "
            f"{_num(f.get('planned', 0))} retained crops re-embedded, {_num(f.get('carried', 0))} of "
            f"{_num(f.get('tracklets', 0))} earlier tracklets carried over")


def _generic(f: dict[str, Any]) -> str:
    parts = []
    for key, value in f.items():
        if key in ("state", "updated", "error", "cameras") or value in ("", None, [], {}, 0, False):
            continue
        label = key.replace("_", " ")
        parts.append(f"{label}: {_counted(value)}" if isinstance(value, dict) else f"{label} {_num(value)}")
    return ", ".join(parts)


STAGE_NUMBERS = {"ingest": _ingest, "embedder": _embedder, "matcher": _matcher, "backfill": _backfill}


def stage_numbers(stage: str, fields: dict[str, Any]) -> str:
    """A stage's key numbers in words, e.g. ``"model 2, 1,234 crops embedded in 40 batches"``; errors and
    the last error message are appended."""
    text = STAGE_NUMBERS.get(stage, _generic)(fields)
    if fields.get("errors") and stage in STAGE_NUMBERS:
        text += f"; {_num(fields['errors'])} errors"
    if fields.get("error"):
        text += f"; {fields['error']}"
    return text


def camera_rows(fields: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """Ingest's cameras as ``(camera, state, fps, frames, crops written, drops frames/crops)`` rows."""
    rows = []
    for cam_id, c in sorted((fields.get("cameras") or {}).items()):
        state = camera_state(c)
        fps = f"{float(c.get('fps', 0.0)):.1f}" if state not in FINAL_STATES else "-"
        rows.append((cam_id, state, fps, _num(c.get("frames", 0)), _num(c.get("written", 0)),
                     f"{_num(c.get('frame_drops', 0))}/{_num(c.get('crop_drops', 0))}"))
    return rows


def stage_startup(stage: str, cfg: Any) -> str:
    """What a stage is busy with before its first report (loading a model can take half a minute)."""
    detector = cfg.ingest.detector
    lines = {
        "models": "preparing the initial model (first run: ImageNet weights, ONNX export and parity check)",
        "ingest": f"opening {len(cfg.ingest.cameras)} camera(s), loading the {detector.plugin} detector "
                  f"(device {cfg.ingest.device})",
        "embedder": "loading the production model into onnxruntime",
        "matcher": "loading the galleries from Redis",
        "train": "opening the pool and the model registry",
        "api": f"starting the HTTP API on http://{cfg.api.host}:{cfg.api.port}",
    }
    return lines.get(stage, "loading")


# --------------------------------------------------------------------------- media time of recordings
MAX_ORIGINS = 16  # ingest runs of one recording remembered (each run of a file without start_time has its own)


def media_origin_key(prefix: str) -> str:
    return f"{prefix}:media:origins"


def record_media_origin(client: redis.Redis, prefix: str, camera_id: str, origin: float) -> None:
    """Remember that a recorded camera's media time 0 was at Unix time ``origin`` (its source's
    ``media_origin``), so that a timestamp can be shown as a position in the recording too."""
    key = media_origin_key(prefix)
    known = json.loads(client.hget(key, camera_id) or "[]")
    client.hset(key, camera_id, json.dumps(sorted({*known, float(origin)})[-MAX_ORIGINS:]))


def media_origins(client: redis.Redis, prefix: str) -> dict[str, list[float]]:
    """Recorded camera -> the origins of its ingest runs, oldest first (live cameras have none)."""
    return {as_text(k): json.loads(v) for k, v in client.hgetall(media_origin_key(prefix)).items()}


def media_position(origins: Sequence[float], ts: float) -> str | None:
    """``ts`` as a position in the recording (``"1:05"``, ``"1:02:03"``), from the latest origin at or
    before it; ``None`` for a live camera or a time before every known origin."""
    before = [o for o in origins if o <= ts + 1e-6]
    if not before:
        return None
    seconds = int(ts - before[-1])
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
