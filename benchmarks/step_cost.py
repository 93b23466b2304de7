"""P5: cost of one SCL training step relative to a plain cross-entropy classification step.

Both steps use the same ReIDModel (backbone + heads; same forward), the same batch, input size,
optimiser (SGD, Nesterov) and device. The classification step puts a linear classifier over N
pseudo-classes on the global feature and takes one cross-entropy step. The SCL step adds the
selection against the G/L banks (N slots, P=7, K=500), the loss against M and the bank updates.
Repetitions alternate (SCL, CE, SCL, CE, ...) after warm-up steps so that background load hits
both alike; value = median(SCL) / median(CE). Goal: <= 1.15.

Run: ``.venv/bin/python -m benchmarks.step_cost [--backbone mobilenet_v2 --size 128 64 --pool 2000]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._common import write_result
from selfreid.reid_model.config import ModelConfig, TrainConfig
from selfreid.reid_model.data import ArrayCropDataset
from selfreid.reid_model.trainer import SCLTrainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pool", type=int, default=2000, help="N: bank slots = classifier classes")
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(
        model=ModelConfig(backbone=args.backbone, input_size=tuple(args.size)),
        batch_size=args.batch,
        num_workers=0,
        seed=0,
    )
    dummy = ArrayCropDataset(
        [torch.zeros(1, 1, 3, dtype=torch.uint8).numpy()] * args.pool, [i % 6 for i in range(args.pool)]
    )
    trainer = SCLTrainer(cfg, progress=False)
    trainer._setup(dummy, None)
    # Random unit features stand in for the init pass (its cost is not a per-step cost).
    trainer.banks.fill(
        torch.arange(args.pool),
        torch.randn(args.pool, cfg.model.global_dim),
        torch.randn(args.pool, cfg.model.num_stripes, cfg.model.local_dim),
    )
    model, device = trainer.model, trainer.device
    classifier = torch.nn.Linear(cfg.model.global_dim, args.pool).to(device)
    o = cfg.optim
    ce_opt = torch.optim.SGD(
        [*model.parameters(), *classifier.parameters()],
        lr=o.lr,
        momentum=o.momentum,
        nesterov=o.nesterov,
        weight_decay=o.weight_decay,
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, *args.size, generator=gen)
    idx = torch.randperm(args.pool, generator=gen)[: args.batch]
    labels = idx.to(device)

    def scl_step() -> None:
        trainer.step(x, idx, epoch=cfg.scl.warmup_epochs)  # a post-warm-up step: selection on

    def ce_step() -> None:
        with trainer._autocast():
            g, _ = model(trainer._to_device(x))
        loss = torch.nn.functional.cross_entropy(classifier(g), labels)
        ce_opt.zero_grad(set_to_none=True)
        loss.backward()
        ce_opt.step()

    times: dict[str, list[float]] = {"scl": [], "ce": []}
    for rep in range(args.warmup + args.reps):
        for name, fn in (
            (("scl", scl_step), ("ce", ce_step)) if rep % 2 == 0 else (("ce", ce_step), ("scl", scl_step))
        ):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - start)
    scl, ce = statistics.median(times["scl"]), statistics.median(times["ce"])
    ratio = scl / ce
    print(f"SCL step {scl * 1000:.1f} ms, CE step {ce * 1000:.1f} ms, ratio {ratio:.3f}")
    write_result(
        "P5",
        round(ratio, 4),
        "<= 1.15",
        "x (SCL step / CE step)",
        {
            "scl_ms_median": round(scl * 1000, 2),
            "ce_ms_median": round(ce * 1000, 2),
            "scl_ms": [round(t * 1000, 2) for t in times["scl"]],
            "ce_ms": [round(t * 1000, 2) for t in times["ce"]],
            "backbone": args.backbone,
            "input_size": list(args.size),
            "batch": args.batch,
            "pool": args.pool,
            "P": trainer.P,
            "K": trainer.K,
            "device": str(device),
            "threads": args.threads,
            "note": "same ReIDModel forward in both; repetitions interleaved (order alternates), medians",
        },
        met=ratio <= 1.15,
    )


if __name__ == "__main__":
    main()
