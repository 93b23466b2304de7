"""F1: forgetting. Adapting on a small site pool must not cost generality: after the product's training
cycle on the PETS + corridor pool, the mAP on the 20 held-out Con-ReID identities (people that pool never
shows) may drop by at most 0.01.

* **pool**: what the demo's cameras record, without labels: PETS 2009 S2L1 frames 401-795 (public
  detections tracked by ByteTrack, two virtual cameras by time; :func:`benchmarks.idf1_vtest.vtest_pool`)
  plus the indoor corridor clip (YOLOX-nano detections tracked by ByteTrack, ``--corridor-stride``),
  at most ``service.snapshot_crops`` crops, the gate's held-out tracklets left out of training;
* **training**: the product config's (``--config``, default ``configs/demo.yaml``): ``train`` section,
  ``service.epochs``, warm start from version 1, one run per training seed (``--seeds``);
* **score**: Con-ReID held-out mAP (A1's protocol, :func:`selfreid.pipeline.evaluation.adaptation.conreid_heldout`)
  of version 1 and of each adapted model, through the exported ONNX file.

Run: ``.venv/bin/python -m benchmarks.forgetting [--seeds 1]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import limit_threads, sample_data, write_result
from benchmarks.idf1_vtest import VTEST_FPS, Pool, adapt, embed, product_config, save_init, version_one, vtest_pool

DROP_GOAL = 0.01
CORRIDOR_FPS = 10.0


def corridor_crops(video: Path, stride: int) -> tuple[list[np.ndarray], list[str], list[float]]:
    """Person crops of the corridor clip as ingest records them: YOLOX-nano on every ``stride``-th frame,
    ByteTrack, ``(crop, tracklet key, time in seconds)``."""
    import cv2

    from selfreid.plugins.contracts import Frame
    from selfreid.plugins.detectors.yolox import YoloxOnnxDetector
    from selfreid.plugins.trackers.ultralytics_trackers import ByteTrackTracker

    detector = YoloxOnnxDetector(YoloxOnnxDetector.Settings(), device="cpu")
    tracker = ByteTrackTracker(ByteTrackTracker.Settings(), frame_rate=CORRIDOR_FPS / stride)
    crops, groups, times = [], [], []
    cap = cv2.VideoCapture(str(video))
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        index += 1
        if index % stride:
            continue
        for d in tracker.update(Frame("corridor", index, index / CORRIDOR_FPS, frame), detector.detect([frame])[0]):
            x1, y1, x2, y2 = (int(round(v)) for v in d.box)
            crop = frame[max(0, y1) : y2, max(0, x1) : x2]
            if crop.size and y2 - y1 >= 48:
                crops.append(crop.copy()), groups.append(f"corridor/{d.track_id}"), times.append(index / CORRIDOR_FPS)
    cap.release()
    return crops, groups, times


def site_pool(data: Path, service, stride: int, seed: int = 0) -> Pool:
    """PETS + corridor, at most ``service.snapshot_crops`` crops split evenly over the two sources."""
    from selfreid.pipeline.training.service import holdout_mask

    pets = vtest_pool(data / "pets09-s2l1", service.snapshot_crops // 2, service.holdout_fraction, seed)
    crops, groups, times = corridor_crops(data / "clips" / "one-by-one-person-detection.mp4", stride)
    keep = sorted(np.random.default_rng(seed).permutation(len(crops))[: service.snapshot_crops - len(pets.images)])
    groups_all = pets.groups + [groups[i] for i in keep]
    return Pool(pets.images + [crops[i] for i in keep], pets.cameras + ["corridor"] * len(keep), groups_all,
                pets.times + [times[i] for i in keep], holdout_mask(groups_all, service.holdout_fraction, seed))


def conreid_map(model: torch.nn.Module, data: Path, tmp: Path, name: str) -> dict[str, float]:
    from selfreid.pipeline.evaluation.adaptation import conreid_heldout, heldout_metrics, read_images

    query, gallery = conreid_heldout(data / "con-reid" / "bounding_box_train")
    vectors = embed(model, read_images(query) + read_images(gallery), tmp / f"{name}.onnx", name)
    fq, fg = torch.from_numpy(vectors[: len(query)]), torch.from_numpy(vectors[len(query):])
    return heldout_metrics(fq, fg, query, gallery)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1")
    parser.add_argument("--mode", default=None, help="train.mode override (scl | site)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's service.epochs")
    parser.add_argument("--corridor-stride", type=int, default=6, help="detect on every n-th corridor frame")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    limit_threads(args.threads)
    from selfreid.reid_model.checkpoint import load_model

    data = sample_data()
    base_cfg, service = product_config(args.config, seed=0, mode=args.mode, epochs=args.epochs)
    started = time.monotonic()
    pool = site_pool(data, service, args.corridor_stride)
    print(f"pool: {len(pool.images)} crops, {len(set(pool.groups))} tracklets, cameras {sorted(set(pool.cameras))}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        v1 = version_one(base_cfg)
        init = save_init(v1, base_cfg, tmp / "v1.pt")
        before = conreid_map(v1, data, tmp, "1")
        print(f"before: mAP {before['mAP']:.4f}", flush=True)
        after = []
        for seed in range(args.seeds):
            cfg, _ = product_config(args.config, seed=seed, mode=args.mode, epochs=args.epochs)
            fit = adapt(cfg, pool, init, tmp / f"train{seed}")
            scores = conreid_map(load_model(fit.checkpoint)[0].eval(), data, tmp, f"2-seed{seed}")
            after.append({**scores, "seed": seed, "epochs_done": fit.epochs, "drop": before["mAP"] - scores["mAP"]})
            print(f"seed {seed}: mAP {scores['mAP']:.4f} (drop {before['mAP'] - scores['mAP']:+.4f})", flush=True)
    worst = max(a["drop"] for a in after)
    details = {"before": before, "after": after, "mode": base_cfg.mode, "epochs": base_cfg.epochs,
               "pool": {"crops": len(pool.images), "tracklets": len(set(pool.groups)),
                        "held_out_crops": int(pool.held.sum()), "pets_fps": VTEST_FPS},
               "wall_seconds": round(time.monotonic() - started, 1)}
    write_result("F1", worst, f"Con-ReID held-out mAP drop after adapting on the PETS + corridor pool <= {DROP_GOAL} "
                 f"(before {before['mAP']:.4f})", "mAP drop (worst seed)", details, met=worst <= DROP_GOAL)


if __name__ == "__main__":
    main()
