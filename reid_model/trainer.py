"""The SCL training loop (method.md section 1.6) with resumable checkpoints.

``SCLTrainer(cfg).fit(dataset, out_dir)`` trains on an unlabelled :class:`CropDataset` and writes
``out_dir/last.pt`` (see :mod:`selfreid.reid_model.checkpoint`) after every epoch and when the
``max_minutes`` budget stops it, plus ``out_dir/train_log.jsonl`` (one JSON record per epoch:
loss, neighbour precision when monitoring labels are given, P, K, seconds, and the step losses as
a curve of at most 50 chunk means).

Per step: forward (train mode) -> select positives/negatives against G/L -> loss against M ->
backward + SGD step -> G/L momentum update -> M update of the positive slots (section 1.3 of
method.md; M is read at forward time and written after backward).

Randomness comes from ``cfg.seed`` only: the epoch order and augmentations are drawn from
generators seeded by ``(seed, epoch)``, so a resumed run repeats the uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from selfreid.reid_model.banks import MemoryBanks
from selfreid.reid_model.checkpoint import load_model, read_checkpoint, save_checkpoint
from selfreid.reid_model.config import TrainConfig
from selfreid.reid_model.data import CropDataset, camera_balanced_order
from selfreid.reid_model.loss import scl_loss
from selfreid.reid_model.model import ReIDModel, build_model
from selfreid.reid_model.selection import (
    Selection,
    effective_counts,
    group_constraints,
    pairwise_distance,
    scaled_counts,
    select_neighbours,
    select_warmup,
)
from selfreid.reid_model.structure import PoolStructure, hidden_positives, pool_structure
from selfreid.reid_model.transforms import build_transform, input_spec

__all__ = ["SCLTrainer", "FitResult", "resolve_device", "save_checkpoint", "load_model"]

LAST = "last.pt"
LOG = "train_log.jsonl"
CURVE_POINTS = 50  # loss points logged per epoch

_T = TypeVar("_T")


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class FitResult:
    """What :meth:`SCLTrainer.fit` produced."""

    checkpoint: Path
    epochs: int
    finished: bool
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)


def loss_curve(losses: list[float], points: int = CURVE_POINTS) -> list[float]:
    """The epoch's step losses as at most ``points`` chunk means: a training curve small enough for
    the epoch log and the model registry."""
    if not losses:
        return []
    chunks = np.array_split(np.asarray(losses, dtype=np.float64), min(points, len(losses)))
    return [round(float(c.mean()), 5) for c in chunks]


class SCLTrainer:
    """Selective Contrastive Learning on unlabelled crops.

    Args:
        cfg: every hyper-parameter (seed defaults).
        progress: show a rich progress bar (stderr).
        after_epoch: optional seam called with ``(trainer, record)`` after each epoch's log record.

    Example:
        >>> result = SCLTrainer(TrainConfig()).fit(image_folder_dataset("crops/"), "runs/a")  # doctest: +SKIP
        >>> model, cfg = load_model(result.checkpoint)  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: TrainConfig,
        progress: bool = True,
        after_epoch: Callable[[SCLTrainer, dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.after_epoch = after_epoch
        self.device = resolve_device(cfg.device)
        self.model: ReIDModel | None = None
        self.banks: MemoryBanks | None = None

    # ---------------------------------------------------------------- setup
    def _setup(self, dataset: CropDataset, init_checkpoint: str | None) -> None:
        torch.manual_seed(self.cfg.seed)
        if init_checkpoint:
            self.model, ck_cfg = load_model(init_checkpoint)
            self.cfg = self.cfg.model_copy(update={"model": ck_cfg.model})
        else:
            self.model = build_model(self.cfg.model)
        self.model.to(self.device).train()
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        o = self.cfg.optim
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            nesterov=o.nesterov,
            weight_decay=o.weight_decay,
        )
        m = self.cfg.model
        self.banks = MemoryBanks(
            len(dataset), m.global_dim, m.num_stripes, m.local_dim, self.cfg.scl.bank_momentum, self.device
        )
        self.cams = dataset.camera_ids.to(self.device)
        groups = dataset.group_ids() if self.cfg.scl.tracklet_positives else None
        self.groups = groups.to(self.device) if groups is not None else None
        s = self.cfg.scl
        counts = scaled_counts if s.scale_with_pool else (lambda p, k, n, c: effective_counts(p, k, n))
        self.P, self.K = counts(s.positives, s.negatives, len(dataset), len(torch.unique(dataset.camera_ids)))
        self.structure, self.hidden, self.skip = self._site_setup(dataset)
        self.select_gen = torch.Generator().manual_seed(self.cfg.seed + 17)
        self.spec = input_spec(self.cfg.model)

    def _site_setup(self, dataset: CropDataset) -> tuple[PoolStructure | None, float, int]:
        """Site mode: the pool's structure and the window correction (expected own-identity crops
        among the window's negatives, from the label-free identity estimate)."""
        if self.cfg.mode != "site":
            return None, 0.0, 0
        site = self.cfg.site
        groups = dataset.group_ids()
        if groups is None:
            groups = torch.full((len(dataset),), -1, dtype=torch.long)
        structure = pool_structure(groups, dataset.camera_ids, dataset.times, site.min_separation_s)
        identities = site.identities or structure.estimated_identities()
        hidden = hidden_positives(len(dataset), identities, self.P)
        self.site_info = {"tracklets": structure.tracklets, "identities": identities, "hidden": round(hidden, 2)}
        if site.window == "seed":
            return structure.to(self.device), 0.0, 0
        if site.window == "skip":
            return structure.to(self.device), 0.0, round(hidden)
        return structure.to(self.device), hidden, 0

    def _built(self) -> tuple[ReIDModel, MemoryBanks]:
        """The model and banks that :meth:`fit` builds (``_setup``) before any step."""
        if self.model is None or self.banks is None:
            raise RuntimeError("SCLTrainer: the model and banks are built by fit(); none yet")
        return self.model, self.banks

    def _autocast(self) -> AbstractContextManager[object]:
        if self.cuda and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda and self.cfg.channels_last else x

    def _forward(self, model: ReIDModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global and local embeddings of a batch (under autocast on CUDA with ``amp``)."""
        with self._autocast():
            return cast(tuple[torch.Tensor, torch.Tensor], model(self._to_device(x)))  # Module.__call__ is Any

    def _batches(self, dataset: CropDataset, epoch: int) -> list[torch.Tensor]:
        """The epoch's batches of slot indices (a trailing batch of one is dropped: BatchNorm needs two)."""
        gen = _epoch_generator(self.cfg.seed, epoch, 1)
        n = len(dataset)
        order = (
            camera_balanced_order(dataset.camera_ids, gen)
            if self.cfg.scl.camera_balanced_sampling
            else torch.randperm(n, generator=gen)
        )
        batches = list(torch.split(order, self.cfg.batch_size))
        return [b for b in batches if len(b) > 1]

    def _loader(
        self, dataset: CropDataset, batches: list[torch.Tensor], epoch: int, augment: bool
    ) -> torch.utils.data.DataLoader[tuple[torch.Tensor, int]]:
        dataset.transform = build_transform(self.spec, self.cfg.augment if augment else None)
        torch.manual_seed(self.cfg.seed * 7919 + epoch)  # augmentations in the main process
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=[b.tolist() for b in batches],
            num_workers=self.cfg.num_workers,
            generator=_epoch_generator(self.cfg.seed, epoch, 2),
            pin_memory=self.cuda,
            persistent_workers=False,
        )

    # ---------------------------------------------------------------- banks
    @torch.no_grad()
    def init_banks(self, dataset: CropDataset) -> None:
        """Fill G and L with one pass. 'seed': train mode (BN batch statistics, running stats updated)
        over flipped, shuffled training batches, as the seed; 'eval': eval mode, test transform."""
        seed_mode = self.cfg.scl.bank_init == "seed"
        model, banks = self._built()
        model.train(seed_mode)
        # Every slot exactly once (no camera balancing here); a trailing single crop joins the last batch.
        order = (
            torch.randperm(len(dataset), generator=_epoch_generator(self.cfg.seed, -1, 1))
            if seed_mode
            else torch.arange(len(dataset))
        )
        batches = list(torch.split(order, self.cfg.batch_size if seed_mode else 64))
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2:] = [torch.cat(batches[-2:])]
        for x, idx in self._track(self._loader(dataset, batches, -1, augment=seed_mode), "init banks"):
            g, l = self._forward(model, x)
            banks.fill(idx.to(self.device), g, l)
        model.train()

    # ---------------------------------------------------------------- steps
    def select(self, g: torch.Tensor, l: torch.Tensor, idx: torch.Tensor, epoch: int) -> Selection:
        """Positives/negatives for one batch (warm-up during the first ``warmup_epochs`` epochs)."""
        s = self.cfg.scl
        _, banks = self._built()
        if epoch < s.warmup_epochs:
            return select_warmup(
                idx, len(banks), self.P, self.K, self.select_gen, s.reproduce_warmup_self_negative_bug
            )
        dist = pairwise_distance(
            g.detach(),
            l.detach(),
            banks.G,
            banks.L,
            s.lambda_g,
            s.lambda_c,
            self.cams[idx],
            self.cams,
        )
        if self.structure is not None:
            site = self.structure.constraints(idx)
            cross = self.cfg.site.cross_camera_positives
            if cross:
                site = replace(site, other_camera=self.cams[idx][:, None] != self.cams[None, :])
            guaranteed = self.cfg.site.cannot_link_negatives
            return select_neighbours(dist, idx, self.P, self.K, site, guaranteed, self.skip, cross)
        constraints = group_constraints(self.groups, idx) if self.groups is not None else None
        return select_neighbours(dist, idx, self.P, self.K, constraints)

    def step(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> tuple[float, Selection]:
        """One optimisation step; returns the loss and the selection used."""
        idx = idx.to(self.device)
        model, banks = self._built()
        g, l = self._forward(model, x)
        selection = self.select(g, l, idx, epoch)
        loss = scl_loss(g, l, banks.M, selection, self.cfg.scl, self.hidden)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        self.optimizer.step()
        banks.update_features(idx, g, l)
        banks.update_mixture(selection.positive_index, l.flatten(1), g)
        return float(loss.detach()), selection

    # ---------------------------------------------------------------- loop
    def fit(
        self,
        dataset: CropDataset,
        out_dir: str | Path,
        init_checkpoint: str | None = None,
        resume: bool = False,
        monitor_labels: torch.Tensor | None = None,
    ) -> FitResult:
        """Train and checkpoint to ``out_dir``. ``resume`` continues ``out_dir/last.pt`` when it exists.
        ``monitor_labels`` ``[N]`` (optional) are used only to log the positives' precision, never to train."""
        if len(dataset) < self.cfg.batch_size or len(dataset) < 3:
            raise ValueError(f"{len(dataset)} crops: need at least max(3, batch_size={self.cfg.batch_size})")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        start_epoch, start_step = 0, 0
        started = time.monotonic()  # the budget covers set-up and the bank pass too (minutes on a large pool)
        self._setup(dataset, init_checkpoint)
        if resume and (out / LAST).is_file():
            start_epoch, start_step = self._restore(out / LAST)
        else:
            (out / LOG).unlink(missing_ok=True)  # a fresh run's log starts empty, as its history does
            self.init_banks(dataset)
        labels = monitor_labels.to(self.device) if monitor_labels is not None else None
        history: list[dict[str, Any]] = []
        epoch, finished = start_epoch, True
        for epoch in range(start_epoch, self.cfg.epochs):
            record, stopped_at = self._run_epoch(
                dataset, epoch, start_step if epoch == start_epoch else 0, labels, started
            )
            if stopped_at is not None:
                self._save(out / LAST, epoch, stopped_at)
                finished = False
                break
            history.append(record)
            with open(out / LOG, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self._save(out / LAST, epoch + 1, 0, {"loss": record["loss"]})
            if self.after_epoch:
                self.after_epoch(self, record)
        else:
            epoch = self.cfg.epochs
        metrics = {k: v for k, v in (history[-1] if history else {}).items() if isinstance(v, float)}
        return FitResult(out / LAST, epoch, finished, metrics, history)

    def _run_epoch(
        self, dataset: CropDataset, epoch: int, skip: int, labels: torch.Tensor | None, started: float
    ) -> tuple[dict[str, Any], int | None]:
        batches = self._batches(dataset, epoch)
        loader = self._loader(dataset, batches, epoch, augment=True)
        t0 = time.monotonic()
        losses, precisions = [], []
        budget = self.cfg.max_minutes * 60 if self.cfg.max_minutes else None
        for i, (x, idx) in enumerate(self._track(loader, f"epoch {epoch + 1}/{self.cfg.epochs}")):
            if i < skip:
                continue
            if budget is not None and time.monotonic() - started > budget:
                return {}, i
            loss, selection = self.step(x, idx, epoch)
            losses.append(loss)
            if labels is not None and selection.positives:
                pos = selection.index[:, 1 : 1 + selection.positives]
                precisions.append(float((labels[pos] == labels[selection.index[:, :1]]).float().mean()))
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(torch.tensor(losses).mean()) if losses else float("nan"),
            "warmup": epoch < self.cfg.scl.warmup_epochs,
            "P": self.P,
            "K": self.K,
            "mode": self.cfg.mode,
            **(self.site_info if self.structure is not None else {}),
            "steps": len(losses),
            "seconds": round(time.monotonic() - t0, 2),
            "loss_curve": loss_curve(losses),
        }
        if precisions:
            record["neighbour_precision"] = float(torch.tensor(precisions).mean())
        return record, None

    def _track(self, iterable: Iterable[_T], description: str) -> Iterator[_T]:
        if not self.progress:
            yield from iterable
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True) as bar:
            yield from bar.track(iterable, description=description)

    # ---------------------------------------------------------------- checkpoints
    def _save(self, path: Path, epoch: int, step: int, metrics: dict[str, float] | None = None) -> None:
        model, banks = self._built()
        rng = {"torch": torch.get_rng_state(), "select": self.select_gen.get_state()}
        if self.cuda:
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        save_checkpoint(
            path,
            model,
            self.cfg,
            epoch,
            metrics,
            optimizer=self.optimizer.state_dict(),
            banks=banks.state_dict(),
            rng=rng,
            step=step,
        )

    def _restore(self, path: Path) -> tuple[int, int]:
        state = read_checkpoint(path)
        saved = json.loads(state["train_config"])
        if saved["model"] != json.loads(self.cfg.model.model_dump_json()):
            raise ValueError(f"{path}: trained with another model config; resume needs the same one")
        model, banks = self._built()
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        banks.load_state_dict(state["banks"])
        torch.set_rng_state(state["rng"]["torch"])
        self.select_gen.set_state(state["rng"]["select"])
        if self.cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        return int(state["epoch"]), int(state.get("step", 0))
