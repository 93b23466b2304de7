"""D1: person-detection recall (and precision, fps) of every built-in detector on PETS09 S2L1.

Frames 1-400 of ``vtest.avi`` (read through the ``file`` source) against the MOT15 ground truth,
IoU >= 0.5, one-to-one Hungarian matching; ``considered == 0`` rows are ignore regions
(:mod:`selfreid.pipeline.evaluation.detection`). Every detector sees the same frames in the same
batches; fps counts ``detect`` time only (decoding excluded). The value is the recall of the
default detector (``yolo`` with its default settings and offline weights).

    .venv/bin/python -m benchmarks.detection_recall [--frames 400] [--batch 8] [--detectors yolo,yolox,hog]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from rich.progress import Progress

from benchmarks._common import limit_threads, sample_data, write_result

DEFAULT = "yolo"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=400, help="Frames 1..N (the ground truth covers 1-400).")
    p.add_argument("--batch", type=int, default=8, help="Frames per detect() call.")
    p.add_argument(
        "--detectors", default="yolo,yolox,hog", help="Registered detector names, comma-separated."
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch / OpenCV / onnxruntime CPU threads.")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    limit_threads(args.threads)
    import numpy as np

    from selfreid.pipeline.config import CameraConfig
    from selfreid.pipeline.evaluation.detection import detection_recall, load_mot_gt
    from selfreid.plugins import registry

    data = sample_data()
    gt = load_mot_gt(data / "pets09-s2l1" / "gt_frames_0001-0400.txt", max_frame=args.frames)
    names = args.detectors.split(",")
    detectors = {n: registry.create("detectors", n, {}, where=f"D1.{n}", device=args.device) for n in names}
    source = registry.create(
        "sources", "file", {}, camera=CameraConfig(id="pets", uri=str(data / "pets09-s2l1" / "vtest.avi"))
    )
    found: dict[str, dict[int, list]] = defaultdict(dict)
    seconds: dict[str, float] = defaultdict(float)
    batch: list = []

    def run_batch() -> None:
        for name, det in detectors.items():
            start = time.perf_counter()
            out = det.detect([f.image for f in batch])
            seconds[name] += time.perf_counter() - start
            found[name].update({f.index: dets for f, dets in zip(batch, out)})
        batch.clear()

    for det in detectors.values():  # warm-up (lazy init, first-call allocations) outside the timing
        det.detect([np.zeros((576, 768, 3), np.uint8)] * min(2, args.batch))
    with Progress() as progress:
        task = progress.add_task("D1 detection recall", total=args.frames)
        for frame in source.frames():
            if frame.index > args.frames:
                break
            batch.append(frame)
            if len(batch) == args.batch:
                run_batch()
            progress.update(task, completed=frame.index)
        if batch:
            run_batch()
    source.close()

    per_detector = {}
    for name in names:
        score = detection_recall(gt, found[name], iou=0.5).as_dict()
        score["fps"] = round(args.frames / seconds[name], 2)
        score["settings"] = detectors[name].settings.model_dump()
        score["device"] = getattr(detectors[name], "device", "cpu")
        per_detector[name] = score
        print(f"{name:6s} recall {score['recall']:.3f} precision {score['precision']:.3f} fps {score['fps']}")
    value = per_detector[DEFAULT]["recall"] if DEFAULT in per_detector else float("nan")
    write_result(
        "D1",
        value,
        goal="measured: recall@IoU0.5 of the default detector on PETS09-S2L1 frames 1-400 (no target set)",
        unit="recall",
        details={
            "frames": args.frames,
            "batch": args.batch,
            "iou": 0.5,
            "threads": args.threads,
            "detectors": per_detector,
        },
        met=None,
    )


if __name__ == "__main__":
    main()
