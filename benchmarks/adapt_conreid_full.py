"""A2: the product's best unsupervised Con-ReID model, reproducible by one command.

Adapts version 1 of ``--config`` (its ``train`` section, the default ``train.mode`` unless ``--mode``)
on **every crop of the public Con-ReID train split** (7,711 crops, 71 people, 6 cameras) within a CPU
wall-time budget (``--minutes``, 45 by default), exports the result to
``.selfreid/bench/A2/model.onnx`` (not committed) and writes benchmarks/results/A2.json with the
training curve, crops, epochs and minutes.

Labels are never a training target. Site mode needs what a tracker and a clock give a pool; Con-ReID
has neither, so, as in A1, runs of up to ``--track-len`` crops of one person in one camera stand in for
tracklets and each camera shows its people in scenes of ``--concurrent`` at once
(:func:`benchmarks.adapt_conreid._site_structure`): the person id forms those runs only. With
``--mode scl`` nothing reads it. The people to score this model on are not in the public data (A1's
held-out ids are part of this split), so no mAP is reported here.

Run: ``.venv/bin/python -m benchmarks.adapt_conreid_full`` (``--minutes 2 --max-crops 400 --no-write``
for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks._common import limit_threads, sample_data, write_result
from benchmarks.idf1_vtest import product_config, save_init, version_one

OUT = Path(".selfreid/bench/A2")
BUDGET_MINUTES = 45.0
SAVE_RESERVE_MINUTES = 0.5  # the last step and the final checkpoint run past the trainer's budget (2 s on 2 cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/local.yaml", help="product config whose train section runs")
    parser.add_argument("--mode", default=None, help="train.mode override (scl | site); default: the config's")
    parser.add_argument("--minutes", type=float, default=BUDGET_MINUTES, help="training wall-time budget")
    parser.add_argument("--epochs", type=int, default=50, help="upper bound; the budget usually ends training first")
    parser.add_argument("--max-crops", type=int, default=None, help="a random subset (smoke runs only)")
    parser.add_argument("--track-len", type=int, default=4)
    parser.add_argument("--concurrent", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the result instead of recording it")
    args = parser.parse_args()
    limit_threads(args.threads)

    from benchmarks.adapt_conreid import _site_structure
    from selfreid.reid_model.checkpoint import load_model
    from selfreid.reid_model.data import FileCropDataset, read_market
    from selfreid.reid_model.export import export_onnx
    from selfreid.reid_model.trainer import SCLTrainer

    items = read_market(sample_data() / "con-reid" / "bounding_box_train")
    if args.max_crops:
        items = [items[i] for i in sorted(np.random.default_rng(0).permutation(len(items))[: args.max_crops])]
    groups, times = _site_structure(items, args.track_len, args.concurrent, seed=1)
    dataset = FileCropDataset([i.path for i in items], [i.camera for i in items], groups, [i.frame for i in items], times)
    cfg, _ = product_config(args.config, seed=0, mode=args.mode, epochs=args.epochs)
    cfg = cfg.model_copy(update={"max_minutes": max(args.minutes - SAVE_RESERVE_MINUTES, 0.1)})
    OUT.mkdir(parents=True, exist_ok=True)
    init = save_init(version_one(cfg), cfg, OUT / "v1.pt")
    started = time.monotonic()
    fit = SCLTrainer(cfg, progress=True).fit(dataset, OUT / "train", init_checkpoint=str(init))
    minutes = (time.monotonic() - started) / 60
    onnx = export_onnx(load_model(fit.checkpoint)[0], OUT / "model.onnx", model_version="A2")
    details = {
        "onnx": str(onnx), "mode": cfg.mode, "config": args.config, "crops": len(items),
        "people_hidden": len({i.pid for i in items}), "cameras": len({i.camera for i in items}),
        "tracklets": len(set(groups)), "epochs_done": fit.epochs, "finished": fit.finished,
        "training_minutes": round(minutes, 2), "budget_minutes": args.minutes,
        "training_curve": [{k: r[k] for k in ("epoch", "loss") if k in r} for r in fit.history],
        "model": cfg.model.model_dump(mode="json"), "smoke": bool(args.max_crops),
    }
    if args.no_write:
        print(json.dumps(details, indent=1))
        return
    write_result("A2", minutes, f"whole Con-ReID train split adapted in <= {BUDGET_MINUTES:g} CPU minutes, "
                 "model at .selfreid/bench/A2/model.onnx", "training minutes", details,
                 met=minutes <= BUDGET_MINUTES and not args.max_crops)


if __name__ == "__main__":
    main()
