"""P1: ingest throughput / bare ``YOLO.predict`` throughput on the same frames and model (goal >= 0.95).

Both sides use the default ``yolo`` detector's weights and settings (imgsz, conf, iou, person class,
device) on the first N frames of ``vtest.avi``, one frame per call (one camera):

* **bare**: ``ultralytics.YOLO(weights).predict(frame)`` over frames already decoded in memory;
* **ingest**: :func:`selfreid.pipeline.ingest.service.run_ingest` on one ``file`` camera of the same video:
  decode -> detect -> ByteTrack -> crop policy -> JPEG -> pool writes into an embedded Redis.

Repetitions alternate bare / ingest so that load changes on a shared machine hit both. Model loading
and warm-up are excluded on both sides: ingest fps is measured between its first status report with
processed frames and its final one (status every 0.25 s; the final report comes after the pool flush).
The value is the median of the per-repetition ratios.

    .venv/bin/python -m benchmarks.ingest_fps [--frames 60] [--reps 3] [--imgsz N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import limit_threads, sample_data, write_result

GOAL = 0.95


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--imgsz", type=int, default=None, help="Override the detector's imgsz (both sides).")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenCV CPU threads.")
    return p.parse_args()


def bare_fps(model: Any, frames: list, predict_kw: dict[str, Any]) -> float:
    for image in frames[:2]:
        model.predict([image], **predict_kw)  # warm-up
    start = time.perf_counter()
    for image in frames:
        model.predict([image], **predict_kw)
    return len(frames) / (time.perf_counter() - start)


def ingest_fps(cfg: Any, redis_url: str, n: int) -> tuple[float, float, dict[str, Any]]:
    """(steady-state fps, end-to-end fps including startup, final camera counters)."""
    from selfreid.pipeline.ingest.service import run_ingest

    samples: list[tuple[float, int]] = []

    def on_status(stats: dict, _pool: Any) -> None:
        samples.append((time.perf_counter(), stats["pets"].frames))

    start = time.perf_counter()
    final = run_ingest(cfg, redis_url, threading.Event(), max_frames=n, on_status=on_status)
    total = time.perf_counter() - start
    t0, f0 = next((t, f) for t, f in samples if f > 0)
    t1, f1 = samples[-1]
    if f1 != n:
        raise SystemExit(f"ingest processed {f1} frames, expected {n}: {final['pets'].as_dict()}")
    return (f1 - f0) / (t1 - t0), n / total, final["pets"].as_dict()


def main() -> None:
    args = parse_args()
    limit_threads(args.threads)
    import cv2
    from ultralytics import YOLO

    from selfreid.pipeline.config import parse_config
    from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
    from selfreid.plugins.detectors.yolo import YoloDetector

    data = sample_data()
    video = data / "pets09-s2l1" / "vtest.avi"
    params = {"imgsz": args.imgsz} if args.imgsz else {}
    detector = YoloDetector(
        YoloDetector.Settings(**params), device=args.device
    )  # resolves weights, device, class
    predict_kw = detector.predict_kwargs()
    model = YOLO(str(detector.weights))
    del detector
    cap = cv2.VideoCapture(str(video))
    frames = [cap.read()[1] for _ in range(args.frames)]
    cap.release()

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        cfg = parse_config(
            {
                "data_dir": tmp,
                "ingest": {
                    "cameras": [{"id": "pets", "source": "file", "uri": str(video)}],
                    "detector": {"plugin": "yolo", "params": params},
                    "device": args.device,
                    "metrics_port": None,
                    "status_interval_s": 0.25,
                },
            }
        )
        reps = []
        try:
            for rep in range(args.reps):
                bare = bare_fps(model, frames, predict_kw)
                steady, end_to_end, counters = ingest_fps(cfg, server.url, args.frames)
                reps.append(
                    {
                        "bare_fps": bare,
                        "ingest_fps": steady,
                        "ingest_fps_with_startup": end_to_end,
                        "ratio": steady / bare,
                        "ingest_counters": counters,
                    }
                )
                print(
                    f"rep {rep + 1}: bare {bare:.2f} fps, ingest {steady:.2f} fps "
                    f"(with startup {end_to_end:.2f}), ratio {steady / bare:.3f}"
                )
        finally:
            server.stop()

    ratio = statistics.median(r["ratio"] for r in reps)
    write_result(
        "P1",
        ratio,
        goal=f"ingest fps / bare YOLO.predict fps on the same frames and model >= {GOAL}",
        unit="ratio",
        details={
            "frames": args.frames,
            "reps": args.reps,
            "threads": args.threads,
            "weights": str(model.ckpt_path or ""),
            "predict": {k: v for k, v in predict_kw.items() if k != "verbose"},
            "bare_fps_median": statistics.median(r["bare_fps"] for r in reps),
            "ingest_fps_median": statistics.median(r["ingest_fps"] for r in reps),
            "repetitions": reps,
        },
        met=ratio >= GOAL,
    )


if __name__ == "__main__":
    main()
