"""M1: cross-camera IDF1 on vtest.avi (virtual cameras) before and after unsupervised adaptation.

What is measured (see :mod:`selfreid.pipeline.evaluation.vtest`): the ReID + matching stage, on ground-truth
boxes of frames 1-400 grouped into per-camera tracklets by ground-truth id (a perfect per-camera
tracker), time split (A = frames 1-200, B = 201-400), every 4th frame; IDF1 by py-motmetrics.

* **before**: the ImageNet MobileNetV2 ReID model (offline weights), exported to ONNX, served by the
  ``onnx`` embedder.
* **after**: the same model adapted with ``SCLTrainer`` (Selective Contrastive Learning, no labels) on
  crops of the *other* half of the video: public detections (``det.txt``, score > 20, height > 50 px)
  of frames 401-795, two virtual cameras by time, tracked by ByteTrack into (camera, track) groups as
  the pool records them, for a short CPU budget (``--minutes``). ``--tracklets`` also trains and scores
  the tracklet-aware-positives variant on the same crops. No frame used for adaptation is evaluated.

The match threshold depends on the model, so it is not tuned on the scored split: for each model it is
picked on the *left/right halves* split (same frames, different camera layout) from a fixed grid and
then applied to the time split. IDF1 at the tests' fixed threshold (0.85) is reported too.

Run: ``.venv/bin/python -m benchmarks.idf1_vtest [--minutes 10 --train-crops 600 --tracklets]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import write_result


def _train_crops(data: Path, limit: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int], list[str]]:
    """Unlabelled crops from the public detections of frames 401-795 (never evaluated), with the
    (camera, track) group each belongs to: ByteTrack (the ingest tracker) runs over every detection,
    as the pool would record it; then ``limit`` crops are sampled."""
    import cv2

    from selfreid.plugins.contracts import Detection, Frame
    from selfreid.plugins.trackers.ultralytics_trackers import ByteTrackTracker

    det = np.loadtxt(data / "det.txt", delimiter=",")
    det = det[(det[:, 0] > 400) & (det[:, 6] > 20) & (det[:, 5] > 50)]
    rows_of: dict[int, list[np.ndarray]] = {}
    for row in det:
        rows_of.setdefault(int(row[0]), []).append(row)
    trackers = {cam: ByteTrackTracker(ByteTrackTracker.Settings(), frame_rate=7.0) for cam in (0, 1)}
    tracked: list[tuple[np.ndarray, int, str]] = []
    cap = cv2.VideoCapture(str(data / "vtest.avi"))
    for frame_no in range(1, max(rows_of) + 1):
        ok, frame = cap.read()
        if not ok:
            break
        if frame_no not in rows_of:
            continue
        cam = 0 if frame_no <= 598 else 1
        detections = [Detection((r[2], r[3], r[2] + r[4], r[3] + r[5]), min(1.0, r[6] / 100)) for r in rows_of[frame_no]]
        for d in trackers[cam].update(Frame(str(cam), frame_no, frame_no / 7.0, frame), detections):
            x1, y1, x2, y2 = (int(round(v)) for v in d.box)
            crop = frame[max(0, y1) : y2, max(0, x1) : x2]
            if crop.size:
                tracked.append((crop.copy(), cam, f"{cam}/{d.track_id}"))
    cap.release()
    chosen = rng.permutation(len(tracked))[:limit]
    return [tracked[i][0] for i in chosen], [tracked[i][1] for i in chosen], [tracked[i][2] for i in chosen]


def _adapt(model_cfg, crops, cams, groups, minutes: float, epochs: int, out: Path, tracklets: bool = False):
    from selfreid.reid_model.config import SCLConfig, TrainConfig
    from selfreid.reid_model.data import ArrayCropDataset
    from selfreid.reid_model.trainer import SCLTrainer

    scl = SCLConfig(warmup_epochs=1, scale_with_pool=True, tracklet_positives=tracklets)
    cfg = TrainConfig(model=model_cfg, epochs=epochs, max_minutes=minutes, batch_size=16, num_workers=0,
                      device="auto", scl=scl)
    result = SCLTrainer(cfg).fit(ArrayCropDataset(crops, cams, groups), out)
    from selfreid.reid_model.checkpoint import load_model

    model, _ = load_model(result.checkpoint)
    return model.eval(), {"epochs_done": result.epochs, "finished": result.finished, **result.metrics}


def _score(model, version: str, crops, data: Path, redis_client, tmp: Path) -> dict:
    from selfreid.pipeline.evaluation.vtest import calibrated_idf1
    from selfreid.plugins.embedders.onnx_embedder import OnnxEmbedder
    from selfreid.reid_model.export import export_onnx

    path = export_onnx(model, tmp / f"{version}.onnx", model_version=version)
    vectors = OnnxEmbedder(OnnxEmbedder.Settings(model=str(path), threads=2)).embed([c for _, c in crops])
    return calibrated_idf1(data.parent, crops, vectors, version, redis_client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="adaptation budget (wall time)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-crops", type=int, default=600)
    parser.add_argument("--before-only", action="store_true", help="skip the adaptation")
    parser.add_argument("--tracklets", action="store_true",
                        help="also adapt with tracklet-aware positives (scl.tracklet_positives) and score it")
    args = parser.parse_args()
    torch.set_num_threads(2)

    import redis

    from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
    from selfreid.pipeline.evaluation.vtest import load_gt, read_crops, virtual_cameras
    from selfreid.plugins.assets import shared_data_dir
    from selfreid.reid_model.config import ModelConfig
    from selfreid.reid_model.model import build_model

    data = shared_data_dir() / "pets09-s2l1"
    boxes = virtual_cameras(load_gt(data / "gt_frames_0001-0400.txt"), "time")
    crops = read_crops(data / "vtest.avi", boxes, every_k=4)
    model_cfg = ModelConfig(backbone="mobilenet_v2")
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedRedis(Path(tmp_name) / "redis") as server:
        tmp = Path(tmp_name)
        client = redis.Redis.from_url(server.url)
        torch.manual_seed(0)
        before = _score(build_model(model_cfg).eval(), "before", crops, data, client, tmp)
        print(f"before: IDF1 {before['idf1']:.3f} (threshold {before['threshold']}), at 0.85: {before['idf1_at_0.85']:.3f}")
        after, training, tracklet = None, None, None
        if not args.before_only:
            train_crops, cams, groups = _train_crops(data, args.train_crops, np.random.default_rng(0))
            torch.manual_seed(0)
            model, training = _adapt(model_cfg, train_crops, cams, groups, args.minutes, args.epochs, tmp / "train")
            training["train_crops"] = len(train_crops)
            training["tracklets"] = len(set(groups))
            after = _score(model, "after", crops, data, client, tmp)
            print(f"after: IDF1 {after['idf1']:.3f} (threshold {after['threshold']}), at 0.85: {after['idf1_at_0.85']:.3f}")
            if args.tracklets:
                torch.manual_seed(0)
                model, tracklet_training = _adapt(model_cfg, train_crops, cams, groups, args.minutes, args.epochs,
                                                  tmp / "train_tracklets", tracklets=True)
                tracklet = {**_score(model, "after-tracklets", crops, data, client, tmp), "training": tracklet_training}
                print(f"after, tracklet-aware positives: IDF1 {tracklet['idf1']:.3f} (threshold {tracklet['threshold']})")
        client.close()
    details = {
        "measured": "ReID+matching stage: gt boxes, gt-consistent per-camera tracklets, time split A=1-200/B=201-400, "
                    "every 4th frame; threshold picked on the halves split; IDF1 by py-motmetrics",
        "before": before,
        "after": after,
        "after_tracklet_positives": tracklet,
        "adaptation": training,
        "adaptation_command": "python -m benchmarks.idf1_vtest --minutes %g --epochs %d --train-crops %d%s"
                              % (args.minutes, args.epochs, args.train_crops, " --tracklets" if args.tracklets else ""),
    }
    value = after["idf1"] if after else before["idf1"]
    met = (after["idf1"] > before["idf1"]) if after else None
    write_result("M1", value, "IDF1 after > before", "IDF1 (after adaptation)" if after else "IDF1 (before only)",
                 details, met=met)


if __name__ == "__main__":
    main()
