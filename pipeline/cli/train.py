"""``selfreid train`` and ``selfreid eval``: offline SCL training on a crop folder, and Market-style
evaluation of a checkpoint. The science lives in ``selfreid.reid_model``; this module only parses
options and turns user mistakes into one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selfreid.pipeline.cli.common import console, fail, load_or_fail

__all__ = ["train_command", "eval_command"]

DataArg = Annotated[Path, typer.Option("--data", help="Folder of person crops (searched recursively).")]


def _checkpoint_folder(out: Path) -> Path:
    """``--out``, created; a one-line error when it is a file or cannot be created."""
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder for the checkpoints")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--out {out} cannot be created: {exc.strerror or exc}")
    return out


def train_command(
    data: DataArg,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Site YAML; its `train:` section is used.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Checkpoint folder (default: DATA_DIR/runs/train).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.pt.")] = False,
    init: Annotated[
        Path | None, typer.Option("--init", help="Start from this checkpoint's weights.")
    ] = None,
) -> None:
    """Train the ReID model with Selective Contrastive Learning on an unlabelled crop folder.

    Cameras come from Market-style names (``_c3``) or from one sub-folder per camera; identity
    labels in file names are never read. Writes OUT/last.pt (resumable) and OUT/train_log.jsonl.
    """
    from selfreid.reid_model.checkpoint import CheckpointError
    from selfreid.reid_model.data import DataError, image_folder_dataset
    from selfreid.reid_model.trainer import SCLTrainer
    from selfreid.reid_model.weights import WeightsError

    cfg = load_or_fail(config, data_dir=out is None)
    out = _checkpoint_folder(out or cfg.path("runs/train"))
    try:
        dataset = image_folder_dataset(data)
        console.print(
            f"training on {len(dataset)} crops from {len(set(dataset.camera_ids.tolist()))} camera(s) -> {out}"
        )
        result = SCLTrainer(cfg.train).fit(
            dataset, out, init_checkpoint=str(init) if init else None, resume=resume
        )
    except (DataError, WeightsError, CheckpointError, ValueError) as exc:
        fail(str(exc))
    state = "finished" if result.finished else "stopped by max_minutes (resume with --resume)"
    console.print(
        f"[green]{state}[/]: {result.epochs} epoch(s), checkpoint {result.checkpoint}, {result.metrics}"
    )


def eval_command(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint (.pt) written by `selfreid train`.")],
    data: Annotated[
        Path, typer.Option("--data", help="Market-1501-style folder (PPPP_cCsS_FFFFFF.jpg names).")
    ],
    query: Annotated[Path | None, typer.Option("--query", help="Query folder (with --gallery).")] = None,
    gallery: Annotated[
        Path | None, typer.Option("--gallery", help="Gallery folder (with --query).")
    ] = None,
    camera_penalty: Annotated[
        bool,
        typer.Option(
            "--camera-penalty", help="Also report the seed's test-time same-camera penalty (lambda_c)."
        ),
    ] = False,
    holdout_ids: Annotated[
        int, typer.Option("--holdout-ids", min=1, help="Identities held out when --data has no split.")
    ] = 20,
    device: Annotated[str, typer.Option("--device", help="'auto', 'cpu' or 'cuda:0'.")] = "auto",
) -> None:
    """Print mAP and CMC rank-1/5/10 of a checkpoint (Market protocol, cosine on the serving embedding).

    Query/gallery: --query and --gallery when given; else DATA/query and DATA/bounding_box_test
    when both exist; else a split of --data itself: --holdout-ids identities seen in two or more
    cameras (seed 0), one camera's crops of each as queries and the rest as gallery (as
    benchmarks/adapt_conreid.py does; the model should not have been trained on those identities).
    """
    import torch

    from selfreid.reid_model.checkpoint import CheckpointError, load_model
    from selfreid.reid_model.data import DataError, FileCropDataset, read_market, split_market
    from selfreid.reid_model.evaluation import evaluate_features, extract_features
    from selfreid.reid_model.trainer import resolve_device

    if (query is None) != (gallery is None):
        fail("--query and --gallery go together")
    try:
        if query is None and (data / "query").is_dir() and (data / "bounding_box_test").is_dir():
            query, gallery = data / "query", data / "bounding_box_test"
        if query is not None and gallery is not None:  # both or neither (checked above)
            q_items, g_items = read_market(query), read_market(gallery)
            split = f"{query} / {gallery}"
        else:
            _, q_items, g_items = split_market(read_market(data), holdout_ids, seed=0)
            split = f"{holdout_ids} held-out identities of {data}"
        net, train_cfg = load_model(model, resolve_device(device))
    except (DataError, CheckpointError, RuntimeError) as exc:
        fail(str(exc))
    console.print(f"evaluating {model} on {len(q_items)} queries, {len(g_items)} gallery crops ({split})")
    with torch.inference_mode():
        q_feats, g_feats = [
            extract_features(
                net,
                FileCropDataset([i.path for i in items], [i.camera for i in items]),
                device=next(net.parameters()).device,
            )
            for items in (q_items, g_items)
        ]
    args = (
        [i.pid for i in q_items],
        [i.pid for i in g_items],
        [i.camera for i in q_items],
        [i.camera for i in g_items],
    )
    rows = [("standard (cosine)", evaluate_features(q_feats, g_feats, *args))]
    if camera_penalty:
        rows.append(
            (
                f"+ camera penalty {train_cfg.scl.lambda_c}",
                evaluate_features(q_feats, g_feats, *args, camera_penalty=train_cfg.scl.lambda_c),
            )
        )
    for name, r in rows:
        typer.echo(
            f"{name}: mAP {r['mAP']:.4f}  R1 {r['rank1']:.4f}  R5 {r['rank5']:.4f}  R10 {r['rank10']:.4f}"
            f"  ({r['num_queries']} queries)"
        )
