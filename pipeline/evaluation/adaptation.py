"""What adaptation bought: one exported model version against another, on labelled real data.

The same measurements as the benchmarks, by the same code, so that the demo's before/after numbers
and the benchmark results are comparable:

* **Con-ReID held-out identities** (benchmark A1's protocol): the 20 identities that
  ``split_market(..., holdout_ids=20, seed=0)`` holds out, the crops of one camera per identity as
  queries and its crops from the other cameras as the gallery (at most ``query_per_id`` /
  ``gallery_per_id`` per identity); Market protocol, cosine distance: mAP and rank-1. These people
  are never in a site's pool, so this shows whether adapting to the site cost generality.
* **IDF1 on the vtest virtual cameras** (benchmark M1's protocol, :func:`~selfreid.pipeline.evaluation.vtest.calibrated_idf1`):
  ground-truth boxes of PETS09-S2L1 frames 1-400, two virtual cameras by time. ``product_idf1`` is
  what a site gets: the matcher at each version's **own label-free calibration** (the one the
  registry stores; a version without one is calibrated label-free on the scored crops), with
  ``oracle_idf1`` (best threshold on the scored split, labels used) and their gap beside it;
  ``idf1`` is the older protocol (threshold picked on the halves split).

Models are compared as ONNX files, through the serving embedder, exactly as they would serve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfreid.reid_model.data import MarketItem, read_market, split_market
from selfreid.reid_model.evaluation import evaluate_features

__all__ = ["HOLDOUT_IDS", "sample", "per_id", "conreid_heldout", "heldout_metrics", "read_images", "compare_versions"]

HOLDOUT_IDS = 20
EMBED_BATCH = 64
Progress = Callable[[str, int, int], None]  # (step description, done, total)


def sample(items: list[MarketItem], count: int | None, rng: np.random.Generator) -> list[MarketItem]:
    """At most ``count`` items drawn at random, kept in name order."""
    if count is None or len(items) <= count:
        return items
    return [items[i] for i in sorted(rng.choice(len(items), size=count, replace=False))]


def per_id(items: list[MarketItem], limit: int | None, rng: np.random.Generator) -> list[MarketItem]:
    """At most ``limit`` random items per identity."""
    return [it for pid in sorted({i.pid for i in items}) for it in sample([i for i in items if i.pid == pid], limit, rng)]


def conreid_heldout(root: Path, query_per_id: int = 5, gallery_per_id: int = 40,
                    seed: int = 0) -> tuple[list[MarketItem], list[MarketItem]]:
    """(query, gallery) of the held-out identities of a Market-layout folder (Con-ReID's train split)."""
    _, query, gallery = split_market(read_market(root), holdout_ids=HOLDOUT_IDS, seed=seed)
    rng = np.random.default_rng(seed)
    return per_id(query, query_per_id, rng), per_id(gallery, gallery_per_id, rng)


def heldout_metrics(fq: torch.Tensor, fg: torch.Tensor, query: Sequence[MarketItem],
                    gallery: Sequence[MarketItem]) -> dict[str, float]:
    """mAP / rank-k of query features against gallery features; also with the seed's test-time
    camera penalty (lambda_c = 0.05)."""
    args = ([i.pid for i in query], [i.pid for i in gallery], [i.camera for i in query], [i.camera for i in gallery])
    plain = evaluate_features(fq, fg, *args)
    penalised = evaluate_features(fq, fg, *args, camera_penalty=0.05)
    return {**{k: plain[k] for k in ("mAP", "rank1", "rank5", "rank10")},
            "mAP_camera_penalty": penalised["mAP"], "rank1_camera_penalty": penalised["rank1"]}


def _embed(embedder, images: Sequence[np.ndarray], step: str, progress: Progress) -> np.ndarray:
    out = []
    for start in range(0, len(images), EMBED_BATCH):
        out.append(embedder.embed(list(images[start : start + EMBED_BATCH])))
        progress(step, min(start + EMBED_BATCH, len(images)), len(images))
    return np.concatenate(out)


def read_images(items: Sequence[MarketItem]) -> list[np.ndarray]:
    """The items' BGR images; an unreadable file is an error here rather than a crash in the embedder."""
    import cv2

    images: list[np.ndarray] = []
    for it in items:
        image = cv2.imread(str(it.path))
        if image is None:
            raise FileNotFoundError(f"{it.path}: not a readable image")
        images.append(image)
    return images


def _conreid(models: dict[str, Any], root: Path, progress: Progress) -> dict[str, Any]:
    query, gallery = conreid_heldout(root)
    qi, gi = read_images(query), read_images(gallery)
    scores = {}
    for label, embedder in models.items():
        fq = torch.from_numpy(_embed(embedder, qi, f"Con-ReID held-out ids, {label}: query", progress))
        fg = torch.from_numpy(_embed(embedder, gi, f"Con-ReID held-out ids, {label}: gallery", progress))
        scores[label] = heldout_metrics(fq, fg, query, gallery)
    return {**scores, "heldout_ids": HOLDOUT_IDS, "query": len(query), "gallery": len(gallery)}


def _flat_product(scores: dict[str, Any]) -> dict[str, Any]:
    """The product-settings numbers at the top level of a model's vtest scores (the report's rows)."""
    product = scores.get("product") or {}
    return {**scores, "product_idf1": product.get("idf1"), "product_threshold": product.get("threshold"),
            "oracle_idf1": product.get("oracle_idf1"), "product_gap": product.get("gap"),
            "calibration_source": product.get("calibration_source")}


def _vtest(models: dict[str, Any], data_dir: Path, progress: Progress,
           calibrations: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    import redis

    from selfreid.pipeline.evaluation.vtest import calibrated_idf1, load_gt, read_crops, virtual_cameras
    from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis

    pets = data_dir / "pets09-s2l1"
    crops = read_crops(pets / "vtest.avi", virtual_cameras(load_gt(pets / "gt_frames_0001-0400.txt"), "time"), every_k=4)
    scores: dict[str, Any] = {"crops": len(crops)}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        client = redis.Redis.from_url(server.url)
        try:
            for label, embedder in models.items():
                vectors = _embed(embedder, [c for _, c in crops], f"vtest IDF1, {label}: embed", progress)
                progress(f"vtest IDF1, {label}: match", 0, 1)
                scores[label] = _flat_product(calibrated_idf1(data_dir, crops, vectors, label, client,
                                                              stored=calibrations.get(label)))
                progress(f"vtest IDF1, {label}: match", 1, 1)
        finally:
            client.close()
    return scores


def compare_versions(before: Path, after: Path, data_dir: Path,
                     progress: Progress = lambda step, done, total: None,
                     calibrations: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both measurements for two ONNX files: ``{"conreid": {"before", "after", ...}, "vtest": {...}}``.

    ``calibrations``: ``{"before": AssociationCalibration | None, "after": ...}``, each version's stored
    calibration (product settings); a missing one is fitted label-free on the scored crops.
    A measurement whose data is missing from ``data_dir`` is replaced by ``{"missing": reason}``.
    """
    from selfreid.plugins.embedders.onnx_embedder import OnnxEmbedder

    models = {label: OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx))) for label, onnx in
              (("before", before), ("after", after))}
    out: dict[str, Any] = {}
    conreid = data_dir / "con-reid" / "bounding_box_train"
    out["conreid"] = (_conreid(models, conreid, progress) if conreid.is_dir()
                      else {"missing": f"{conreid} not found"})
    gt = data_dir / "pets09-s2l1" / "gt_frames_0001-0400.txt"
    out["vtest"] = _vtest(models, data_dir, progress, calibrations or {}) if gt.is_file() else {"missing": f"{gt} not found"}
    return out
