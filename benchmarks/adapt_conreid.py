"""A1: unsupervised adaptation on Con-ReID, before vs after SCL, for the faithful method and each improvement.

Protocol (fixed seed 0): 20 identities seen in two or more cameras are held out; for each, the
crops of one randomly drawn camera are queries and its crops from the other cameras the gallery
(``reid_model.data.split_market``). The other identities' crops form the training set; their labels
are hidden from training (used only to log the precision of the selected positives). Evaluation:
Market protocol, cosine distance on the serving embedding; the seed's test-time camera penalty
(lambda_c = 0.05) is reported separately.

CPU setting (default; sized for 2 cores shared with five other jobs): mobilenet_v2 with the offline
ImageNet weights, input 128x64 (Con-ReID's native 64x128 crops, no upsampling), a training pool of
``--train-ids`` random training identities with ``--train-crops-per-id`` random crops each
(24 x 25, 526 crops as some have fewer: a dense pool, as a site's pool is, where each person has
more views than the P = 7 positives; a random 240-crop sample of all 51 training ids has ~5 crops
per person, fewer than P),
``--epochs`` epochs of which the first is warm-up (the seed: 3 of 50), at most ``--query-per-id``
queries and ``--gallery-per-id`` gallery crops per held-out id.
Everything else is the seed's config (batch 8, SGD 1e-3, P=7, K=500 clipped to N-P-1).

``--seed-gpu``: the full seed setting (resnet50, 256x128, 50 epochs, 3 warm-up, every crop) for a GPU.

Variants: ``faithful``; ``augment`` (pad 10 + random crop, random erasing 0.5); ``camera_balanced``;
``scale_with_pool``. Tracklet-aware positives are not measured here: Con-ReID has no track ids and
its frame numbers are per-identity counters (frame 1 of camera 1 belongs to 14 different people),
so pseudo-tracklets from (camera, consecutive frame) link different people in 98% of the pairs;
the switch is tested on tensors in tests/reid_model.

Run: ``.venv/bin/python -m benchmarks.adapt_conreid`` (writes benchmarks/results/A1.json after
every variant, so a partial run still leaves its measured numbers).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from benchmarks._common import write_result
from selfreid.pipeline.adaptation_eval import HOLDOUT_IDS, heldout_metrics, per_id, sample
from selfreid.reid_model.config import TrainConfig
from selfreid.reid_model.data import FileCropDataset, MarketItem, read_market, split_market
from selfreid.reid_model.evaluation import extract_features
from selfreid.reid_model.model import build_model
from selfreid.reid_model.trainer import SCLTrainer, load_model

VARIANTS = {
    "faithful": {},
    "augment": {"augment": {"pad_crop": 10, "erasing_p": 0.5}},
    "camera_balanced": {"scl": {"camera_balanced_sampling": True}},
    "scale_with_pool": {"scl": {"scale_with_pool": True}},
}


def _dataset(items: list[MarketItem]) -> FileCropDataset:
    return FileCropDataset(
        [i.path for i in items], [i.camera for i in items], frames=[i.frame for i in items]
    )


def _metrics(model, query, gallery, qd, gd) -> dict[str, float]:
    fq, fg = extract_features(model, qd, batch_size=64), extract_features(model, gd, batch_size=64)
    return heldout_metrics(fq, fg, query, gallery)


def _config(args, overrides: dict) -> TrainConfig:
    base = {
        "model": {"backbone": args.backbone, "input_size": args.input_size},
        "scl": {"warmup_epochs": args.warmup},
        "epochs": args.epochs,
        "num_workers": args.workers,
        "seed": args.train_seed,
        "max_minutes": args.variant_minutes,
    }
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values}
    return TrainConfig.model_validate(base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="Con-ReID bounding_box_train (default: the shared data)")
    parser.add_argument("--seed-gpu", action="store_true", help="full seed setting (resnet50, 50 epochs)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--train-ids", type=int, default=24, help="identities in the training pool")
    parser.add_argument("--train-crops-per-id", type=int, default=25)
    parser.add_argument("--train-crops", type=int, default=None, help="cap on training crops")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--query-per-id", type=int, default=5)
    parser.add_argument("--gallery-per-id", type=int, default=40)
    parser.add_argument("--variant-minutes", type=float, default=8.0, help="training budget per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--train-seed", type=int, default=0, help="training seed (the split always uses seed 0)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only (e.g. a repeat with another --train-seed)"
    )
    args = parser.parse_args()
    if args.seed_gpu:
        args.backbone, args.input_size, args.epochs, args.warmup = "resnet50", (256, 128), 50, 3
        args.train_ids = args.train_crops_per_id = args.train_crops = None
        args.query_per_id = args.gallery_per_id = args.variant_minutes = None
        args.workers = 4
    else:
        args.backbone, args.input_size, args.workers = "mobilenet_v2", (128, 64), 0
    torch.set_num_threads(args.threads)
    if args.data is None:
        from selfreid.plugins.assets import shared_data_dir

        args.data = shared_data_dir() / "con-reid" / "bounding_box_train"

    rng = np.random.default_rng(0)
    train, query, gallery = split_market(read_market(args.data), holdout_ids=HOLDOUT_IDS, seed=0)
    if args.train_ids is not None:  # a denser pool: fewer people, several crops each
        kept = set(rng.choice(sorted({i.pid for i in train}), args.train_ids, replace=False).tolist())
        train = [i for i in train if i.pid in kept]
    train = per_id(train, args.train_crops_per_id, rng)
    train = sample(train, args.train_crops, rng)
    query, gallery = per_id(query, args.query_per_id, rng), per_id(gallery, args.gallery_per_id, rng)
    qd, gd = _dataset(query), _dataset(gallery)
    setting = {
        "backbone": args.backbone,
        "input_size": list(args.input_size),
        "epochs": args.epochs,
        "warmup_epochs": args.warmup,
        "train_crops": len(train),
        "train_ids_hidden": len({i.pid for i in train}),
        "query": len(query),
        "gallery": len(gallery),
        "heldout_ids": HOLDOUT_IDS,
        "seed": 0,
        "subsampled": not args.seed_gpu,
        "torch_threads": args.threads,
        "train_seed": args.train_seed,
    }
    t0 = time.monotonic()
    torch.manual_seed(args.train_seed)  # as the trainer does: "before" is exactly its initial model
    before = _metrics(build_model(_config(args, {}).model), query, gallery, qd, gd)
    setting["before_eval_seconds"] = round(time.monotonic() - t0, 1)
    print("before", json.dumps(before), flush=True)
    results: dict[str, dict] = {}
    labels = torch.tensor([i.pid for i in train])
    for name in args.variants.split(","):
        cfg = _config(args, VARIANTS[name])
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as out:
            fit = SCLTrainer(cfg, progress=False).fit(_dataset(train), out, monitor_labels=labels)
            model, _ = load_model(fit.checkpoint)
        seconds = time.monotonic() - start
        results[name] = {
            "before": before,
            "after": _metrics(model, query, gallery, qd, gd),
            "train_seconds": round(seconds, 1),
            "epochs_done": fit.epochs,
            "finished": fit.finished,
            "history": fit.history,
            "P": fit.history[-1]["P"] if fit.history else None,
            "K": fit.history[-1]["K"] if fit.history else None,
        }
        print(name, json.dumps(results[name]["after"]), f"{seconds:.0f}s", flush=True)
        best = max(results, key=lambda n: results[n]["after"]["mAP"])
        if args.no_write:
            continue
        write_result(
            "A1",
            results[best]["after"]["mAP"],
            "mAP after adaptation > before (ImageNet)",
            "mAP",
            {
                "best_variant": best,
                "before": before,
                "variants": results,
                "setting": setting,
                "wall_seconds": round(time.monotonic() - t0, 1),
                "variants_planned": args.variants.split(","),
            },
            met=results[best]["after"]["mAP"] > before["mAP"],
        )


if __name__ == "__main__":
    main()
