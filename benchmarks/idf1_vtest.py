"""M1: cross-camera IDF1 on vtest.avi at **product settings**, before and after the product's adaptation.

What is measured: the ReID + association stage (:mod:`selfreid.pipeline.evaluation.tracks`):
ground-truth boxes of PETS09-S2L1 frames 1-400 grouped into per-camera tracklets by ground-truth id (a
perfect tracker inside each camera), two virtual cameras by time (A = frames 1-200, B = 201-400), every
4th frame, the ``cross_camera`` matcher with its default settings (cannot-link, assignment), IDF1 by
py-motmetrics.

* **before**: version 1, the configured pretrained model of ``--config`` (``configs/demo.yaml``:
  ImageNet MobileNetV2 at 128x64, heads seeded by ``train.seed``), exported to ONNX.
* **after**: version 1 adapted as the product's training cycle does (the config's ``train`` section,
  ``service.epochs``, warm start from version 1), once per training seed (``--seeds``), on the pool the
  product would have: the *other* half of the video (public detections of frames 401-795, score > 20,
  height > 50 px, two virtual cameras by time, tracked by ByteTrack, one crop every 1/7 s), at most
  ``service.snapshot_crops`` crops, whole tracklets (``service.holdout_fraction``) held out as the gate
  would. No frame used for adaptation is scored.
* **product settings**: each version's association threshold is its label-free calibration
  (:func:`~selfreid.reid_model.calibration.fit_calibration`) on the held-out pool tracklets, exactly
  what the registry stores with the version; no label picks a threshold. The **oracle** IDF1 (best
  threshold on the scored frames, labels used) is reported beside it, and the gap.

Goal (issue 14): mean IDF1 after >= before + 0.03, after > before in at least 4 of 5 training seeds, and
product-vs-oracle gap <= 0.02.

Run: ``.venv/bin/python -m benchmarks.idf1_vtest [--seeds 5]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import limit_threads, sample_data, write_result

GAIN_GOAL = 0.03
SEEDS_GOAL = 4  # of 5
GAP_GOAL = 0.02
VTEST_FPS = 7.0


@dataclass
class Pool:
    """Unlabelled pool crops with what the pool records: camera, tracklet key, time; and the gate's
    held-out mask (whole tracklets)."""

    images: list[np.ndarray]
    cameras: list[str]
    groups: list[str]
    times: list[float]
    held: np.ndarray

    def part(self, held: bool) -> tuple[list[np.ndarray], list[str], list[str], list[float]]:
        idx = np.flatnonzero(self.held == held)
        return ([self.images[i] for i in idx], [self.cameras[i] for i in idx], [self.groups[i] for i in idx],
                [self.times[i] for i in idx])


def vtest_pool(data: Path, limit: int, holdout_fraction: float, seed: int) -> Pool:
    """Frames 401-795 as the pool would record them (module docstring); never scored."""
    import cv2

    from selfreid.pipeline.training.service import holdout_mask
    from selfreid.plugins.contracts import Detection, Frame
    from selfreid.plugins.trackers.ultralytics_trackers import ByteTrackTracker

    det = np.loadtxt(data / "det.txt", delimiter=",")
    det = det[(det[:, 0] > 400) & (det[:, 6] > 20) & (det[:, 5] > 50)]
    rows_of: dict[int, list[np.ndarray]] = {}
    for row in det:
        rows_of.setdefault(int(row[0]), []).append(row)
    trackers = {cam: ByteTrackTracker(ByteTrackTracker.Settings(), frame_rate=VTEST_FPS) for cam in ("A", "B")}
    tracked: list[tuple[np.ndarray, str, str, float]] = []
    cap = cv2.VideoCapture(str(data / "vtest.avi"))
    for frame_no in range(1, max(rows_of) + 1):
        ok, frame = cap.read()
        if not ok:
            break
        if frame_no not in rows_of:
            continue
        cam = "A" if frame_no <= 598 else "B"
        detections = [Detection((r[2], r[3], r[2] + r[4], r[3] + r[5]), min(1.0, r[6] / 100)) for r in rows_of[frame_no]]
        for d in trackers[cam].update(Frame(cam, frame_no, frame_no / VTEST_FPS, frame), detections):
            x1, y1, x2, y2 = (int(round(v)) for v in d.box)
            crop = frame[max(0, y1) : y2, max(0, x1) : x2]
            if crop.size:
                tracked.append((crop.copy(), cam, f"{cam}/{d.track_id}", frame_no / VTEST_FPS))
    cap.release()
    chosen = sorted(np.random.default_rng(seed).permutation(len(tracked))[:limit])
    images, cams, groups, times = (list(x) for x in zip(*(tracked[i] for i in chosen)))
    return Pool(images, cams, groups, times, holdout_mask(groups, holdout_fraction, seed))


def product_config(path: str, seed: int, mode: str | None = None, epochs: int | None = None):
    """``(train config, service config)`` of the product config file, on the CPU, with this training seed."""
    from selfreid.pipeline.config import load_config

    cfg = load_config(path)
    update: dict[str, Any] = {"seed": seed, "device": "cpu", "epochs": epochs or cfg.service.epochs,
                              "max_minutes": cfg.service.max_minutes}
    if mode:
        update["mode"] = mode
    return cfg.train.model_copy(update=update), cfg.service


def version_one(train_cfg) -> torch.nn.Module:
    """Version 1 as :func:`selfreid.pipeline.training.bootstrap.initialise_registry` builds it."""
    from selfreid.reid_model.model import build_model

    torch.manual_seed(train_cfg.seed)
    return build_model(train_cfg.model).eval()


def adapt(train_cfg, pool: Pool, init_checkpoint: Path, out: Path, after_epoch=None):
    """Train on the pool's non-held-out crops, warm-started from ``init_checkpoint``; ``FitResult``."""
    from selfreid.reid_model.data import ArrayCropDataset
    from selfreid.reid_model.trainer import SCLTrainer

    images, cams, groups, times = pool.part(held=False)
    names = sorted(set(cams))
    dataset = ArrayCropDataset(images, [names.index(c) for c in cams], groups, times)
    return SCLTrainer(train_cfg, progress=False, after_epoch=after_epoch).fit(dataset, out, init_checkpoint=str(init_checkpoint))


def save_init(model: torch.nn.Module, train_cfg, path: Path) -> Path:
    from selfreid.reid_model.checkpoint import save_checkpoint

    return save_checkpoint(path, model, train_cfg)


def embed(model: torch.nn.Module, images: list[np.ndarray], path: Path, version: str) -> np.ndarray:
    """Embeddings through the exported ONNX file (what would serve)."""
    from selfreid.reid_model.export import embed_onnx, export_onnx

    return embed_onnx(export_onnx(model, path, model_version=version, slim=False), images)


def pool_calibration(vectors: np.ndarray, pool: Pool, min_gap: float):
    """The label-free calibration on the held-out pool tracklets (None: too few pairs)."""
    from selfreid.reid_model.calibration import CalibrationError, fit_calibration

    _, cams, groups, times = pool.part(held=True)
    try:
        return fit_calibration(vectors, groups, cams, times, min_gap=min_gap)
    except CalibrationError as exc:
        print(f"no calibration: {exc}")
        return None


def vtest_clip(data: Path):
    from selfreid.pipeline.evaluation.tracks import Clip
    from selfreid.pipeline.evaluation.vtest import load_gt, read_crops, virtual_cameras

    boxes = virtual_cameras(load_gt(data / "gt_frames_0001-0400.txt"), "time")
    return Clip(boxes, read_crops(data / "vtest.avi", boxes, every_k=4))


def measure(model, version: str, clip, pool: Pool, service, client, tmp: Path, oracle: bool = True) -> dict[str, Any]:
    """Product-setting IDF1 (calibration on the held-out pool), the oracle beside it, the calibration."""
    from selfreid.pipeline.evaluation.tracks import score_tracks
    from selfreid.reid_model.export import embed_onnx

    onnx = tmp / f"{version}.onnx"
    held = embed(model, pool.part(held=True)[0], onnx, version)
    calibration = pool_calibration(held, pool, service.gate.min_gap_s)
    vectors = embed_onnx(onnx, [c for _, c in clip.crops])
    scores = score_tracks(clip, vectors, version, client, calibration=calibration, oracle=oracle)
    keep = ("idf1", "idp", "idr", "threshold", "oracle_idf1", "oracle_threshold", "gap", "identities_found",
            "identities_true", "baseline_idf1")
    return {"calibration": calibration.to_dict() if calibration else None, **{k: scores[k] for k in keep if k in scores}}


def _verdict(before: dict, after: list[dict]) -> dict[str, Any]:
    gains = [a["idf1"] - before["idf1"] for a in after]
    gaps = [before["gap"], *(a["gap"] for a in after)]
    return {
        "mean_after": float(np.mean([a["idf1"] for a in after])),
        "mean_gain": float(np.mean(gains)),
        "seeds_after_above_before": int(sum(g > 0 for g in gains)),
        "seeds": len(after),
        "max_gap": float(max(gaps)),
        "mean_oracle_after": float(np.mean([a["oracle_idf1"] for a in after])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="product config whose train/service settings run")
    parser.add_argument("--seeds", type=int, default=5, help="training seeds 0..N-1")
    parser.add_argument("--mode", default=None, help="train.mode override (scl | site); default: the config's")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's service.epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only (a smoke run)")
    args = parser.parse_args()
    limit_threads(args.threads)

    import redis

    from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
    from selfreid.reid_model.checkpoint import load_model

    data = sample_data() / "pets09-s2l1"
    base_cfg, service = product_config(args.config, seed=0, mode=args.mode, epochs=args.epochs)
    pool = vtest_pool(data, service.snapshot_crops, service.holdout_fraction, seed=0)
    clip = vtest_clip(data)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedRedis(Path(tmp_name) / "redis", appendonly=False) as server:
        tmp = Path(tmp_name)
        client = redis.Redis.from_url(server.url)
        v1 = version_one(base_cfg)
        init = save_init(v1, base_cfg, tmp / "v1.pt")
        before = measure(v1, "1", clip, pool, service, client, tmp)
        print(f"before: IDF1 {before['idf1']:.3f} at {before['threshold']}, oracle {before['oracle_idf1']:.3f}", flush=True)
        after = []
        for seed in range(args.seeds):
            train_cfg, _ = product_config(args.config, seed=seed, mode=args.mode, epochs=args.epochs)
            t0 = time.monotonic()
            fit = adapt(train_cfg, pool, init, tmp / f"train{seed}")
            model = load_model(fit.checkpoint)[0].eval()
            scores = measure(model, f"2-seed{seed}", clip, pool, service, client, tmp)
            after.append({**scores, "seed": seed, "epochs_done": fit.epochs, "train_seconds": round(time.monotonic() - t0, 1)})
            print(f"seed {seed}: IDF1 {scores['idf1']:.3f} at {scores['threshold']}, oracle {scores['oracle_idf1']:.3f}",
                  flush=True)
        client.close()
    verdict = _verdict(before, after)
    held = int(pool.held.sum())
    details = {
        "measured": "product settings: each version's label-free calibration on held-out pool tracklets (frames "
                    "401-795, ByteTrack); scored on gt tracklets of frames 1-400, time split, every 4th frame",
        "train": {"config": args.config, "mode": base_cfg.mode, "epochs": base_cfg.epochs,
                  "pool_crops": len(pool.images), "held_out_crops": held,
                  "held_out_tracklets": len({g for g, h in zip(pool.groups, pool.held) if h})},
        "before": before, "after": after, **verdict, "wall_seconds": round(time.monotonic() - started, 1),
        "goals": {"gain": GAIN_GOAL, "seeds": f"{SEEDS_GOAL} of 5", "gap": GAP_GOAL},
    }
    if args.no_write:
        print(verdict)
        return
    met = (verdict["mean_gain"] >= GAIN_GOAL and verdict["seeds_after_above_before"] >= SEEDS_GOAL * args.seeds / 5
           and verdict["max_gap"] <= GAP_GOAL)
    write_result("M1", verdict["mean_after"],
                 f"product-settings IDF1 after >= before ({before['idf1']:.3f}) + {GAIN_GOAL}, after > before in "
                 f">= {SEEDS_GOAL} of 5 seeds, gap to oracle <= {GAP_GOAL}",
                 "IDF1 (mean over seeds, product settings)", details, met=met)


if __name__ == "__main__":
    main()
