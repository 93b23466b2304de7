"""Data-parallel SCL training over several processes (``torchrun``), on GPUs (NCCL) or CPUs (gloo).

Launch::

    torchrun --nproc-per-node 4 -m selfreid.reid_model.distributed --data crops/ --out runs/ddp

or, from Python in each worker, ``DistributedSCLTrainer(cfg).fit(dataset, out_dir)`` once
:func:`init_distributed` has joined the process group (it reads torchrun's ``RANK``/``WORLD_SIZE``).

How the parts of :class:`~selfreid.reid_model.trainer.SCLTrainer` are split (a subclass: the loop,
the loss and the selection are the single-process code, untouched):

* **data**: every rank draws the same seeded global batches (``batch_size`` is the *global*
  batch) and takes its slice ``batch[rank::world]``; a batch too small to give every rank two
  crops (BatchNorm) is skipped on all ranks alike.
* **gradients**: each parameter's gradient is all-reduced (averaged) asynchronously as soon as
  backward has produced it (``register_post_accumulate_grad_hook``), and the optimiser's step
  waits for all of them (``register_step_pre_hook``): the overlap torch's DDP gets from buckets,
  without wrapping the module (so checkpoints keep plain parameter names).
* **memory banks: replicated, with all-gathered updates** (:class:`GatheredBanks`). Every rank
  holds the full G, L and M, runs the initialisation pass in full (same seeded batches, so the
  same values), and each training update first all-gathers the batch's slot indices and features
  from every rank, then applies the same update everywhere, so the banks stay bit-identical and
  equal to a single process seeing the global batch. Selection against the banks needs every
  slot on every rank, which is why they are not sharded; the cost is ``N x 24 KB`` per rank with
  the seed's dims (about 2.4 GB at 100k crops), the point where sharding G/L/M by slot and
  all-gathering top-k candidates would pay off.
* **what stays per rank**: BatchNorm statistics are computed on each rank's slice (as with DDP
  without SyncBatchNorm); rank 0's running statistics are saved. This is the one source of
  difference from a single process with the same global batch: the loss trajectories agree in
  shape, not bit for bit (tests/reid_model/test_distributed.py measures it).
* **checkpoints**: rank 0 writes ``last.pt`` and ``train_log.jsonl``; every rank resumes from it.
* ``max_minutes`` is not supported (each rank would stop on its own clock and deadlock the
  others in a collective): use ``epochs``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist

from selfreid.reid_model.banks import MemoryBanks
from selfreid.reid_model.config import TrainConfig
from selfreid.reid_model.data import CropDataset
from selfreid.reid_model.trainer import SCLTrainer

if TYPE_CHECKING:
    from selfreid.reid_model.selection import Selection

__all__ = ["DistContext", "init_distributed", "all_gather_rows", "GatheredBanks", "DistributedSCLTrainer"]


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``); NCCL with one GPU per process when CUDA is present, else gloo."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = "cpu"
    if dist.get_backend() == "nccl":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (``[n_rank, ...]``, ``n_rank`` may differ per rank) from every rank, in rank order."""
    world = dist.get_world_size()
    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros(most, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


class GatheredBanks:
    """:class:`MemoryBanks` whose training updates are first all-gathered from all ranks (module
    docstring). ``fill`` stays local: the initialisation pass runs in full on every rank."""

    def __init__(self, banks: MemoryBanks) -> None:
        self.inner = banks

    def __getattr__(self, name: str) -> Any:  # G, L, M, momentum, state_dict, load_state_dict
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def update_features(self, index: torch.Tensor, g: torch.Tensor, l: torch.Tensor) -> None:
        self.inner.update_features(all_gather_rows(index), all_gather_rows(g.detach().float()),
                                   all_gather_rows(l.detach().float()))

    def update_mixture(self, positives: torch.Tensor, u: torch.Tensor, g: torch.Tensor) -> None:
        self.inner.update_mixture(all_gather_rows(positives), all_gather_rows(u.detach().float()),
                                  all_gather_rows(g.detach().float()))


class _GradientAverager:
    """Async all-reduce of each gradient when it is ready; the optimiser step waits for them."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, world: int) -> None:
        self.world = world
        self.pending: list[tuple[dist.Work, torch.Tensor]] = []
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._launch)  # type: ignore[no-untyped-call]  # unannotated in torch
        optimizer.register_step_pre_hook(self._finish)

    def _launch(self, param: torch.Tensor) -> None:
        grad = param.grad
        assert grad is not None  # the hook runs once the gradient has been accumulated
        work = dist.all_reduce(grad, async_op=True)
        assert work is not None  # async_op=True always returns a Work
        self.pending.append((work, grad))

    def _finish(self, optimizer: torch.optim.Optimizer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for work, grad in self.pending:
            work.wait()
            grad.div_(self.world)
        self.pending.clear()


class DistributedSCLTrainer(SCLTrainer):
    """:class:`SCLTrainer` for one rank of a process group (see the module docstring).

    Example (every rank, after :func:`init_distributed`):
        >>> result = DistributedSCLTrainer(cfg, progress=False).fit(dataset, "runs/ddp")  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: TrainConfig,
        progress: bool = True,
        after_epoch: Callable[[SCLTrainer, dict[str, Any]], None] | None = None,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DistributedSCLTrainer needs a process group: call init_distributed() first")
        if cfg.max_minutes is not None:
            raise ValueError("max_minutes is not supported with several processes (ranks would stop apart); use epochs")
        super().__init__(cfg, progress=progress and dist.get_rank() == 0, after_epoch=after_epoch)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._sharded = True

    def _setup(self, dataset: CropDataset, init_checkpoint: str | None) -> None:
        super()._setup(dataset, init_checkpoint)
        model, banks = self.model, self.banks
        assert model is not None and banks is not None  # SCLTrainer._setup built them
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)  # identical start even if a rank's RNG differed
        self._gathered = GatheredBanks(banks)
        self.banks = cast(MemoryBanks, self._gathered)  # a proxy with MemoryBanks' interface
        self._averager = _GradientAverager(model, self.optimizer, self.world)

    def init_banks(self, dataset: CropDataset) -> None:
        """The single-process initialisation pass, run in full on every rank: the same seeded batches
        give the same features everywhere, so the banks start identical without communication (one
        forward pass over the pool per rank, about a third of an epoch's compute)."""
        self.banks, self._sharded = self._gathered.inner, False
        try:
            super().init_banks(dataset)
        finally:
            self.banks, self._sharded = cast(MemoryBanks, self._gathered), True

    def _batches(self, dataset: CropDataset, epoch: int) -> list[torch.Tensor]:
        """This rank's slice of every global batch (identical seeded order on every rank)."""
        batches = super()._batches(dataset, epoch)
        if not self._sharded:
            return batches
        return [b[self.rank::self.world] for b in batches if len(b) >= 2 * self.world]

    def step(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> tuple[float, Selection]:
        """One step; the returned loss is the mean over ranks (what a single process would log)."""
        loss, selection = super().step(x, idx, epoch)
        value = torch.tensor([loss], dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        dist.all_reduce(value)
        return float(value.item()) / self.world, selection

    def _save(self, path: Path, epoch: int, step: int, metrics: dict[str, Any] | None = None) -> None:
        if self.rank == 0:
            super()._save(path, epoch, step, metrics)
        dist.barrier()


def main(argv: list[str] | None = None) -> None:
    """``torchrun ... -m selfreid.reid_model.distributed --data FOLDER --out DIR [--config train.yaml]``."""
    import argparse

    import yaml

    from selfreid.reid_model.data import image_folder_dataset

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", required=True, help="Crop folder (Market names give cameras).")
    parser.add_argument("--out", required=True, help="Output folder (last.pt, train_log.jsonl).")
    parser.add_argument("--config", help="YAML with TrainConfig keys (the `train:` section of a site config).")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    raw = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    ctx = init_distributed()
    cfg = TrainConfig.model_validate((raw or {}).get("train", raw or {}))
    cfg = cfg.model_copy(update={"device": ctx.device})
    result = DistributedSCLTrainer(cfg).fit(image_folder_dataset(args.data), args.out, resume=args.resume)
    if ctx.is_main:
        print(f"{result.epochs} epochs, checkpoint {result.checkpoint}")
    dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    main()
