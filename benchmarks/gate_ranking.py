"""G1: does the gate's label-free score rank candidate models as labelled identity quality ranks them?

Candidates: version 1 (the parent: the product config's pretrained model) and models adapted from it
with the product config's training settings, over ``train.mode`` (``--modes``) x epochs (the weights
after each of ``--keep-epochs``) x interpolation toward the parent (WiSE-FT, ``--alphas``; 1 = the
trained weights). Two arms, each with its own unlabelled pool and its own labelled score:

* **vtest**: the pool is M1's (:func:`benchmarks.idf1_vtest.vtest_pool`: frames 401-795, ByteTrack
  tracklets, the product's held-out tracklets as the gate's slice); labelled = M1's product-setting
  IDF1 on frames 1-400 (each candidate at its own label-free calibration on the slice);
* **conreid**: the pool is A1's (24 training identities x 25 crops, tracklets and clock as
  :func:`benchmarks.adapt_conreid._site_structure` gives them; ``--conreid-holdout`` of the tracklets
  are the gate's slice); labelled = mAP of the 20 held-out identities (A1's protocol).

Per arm and label-free score (:data:`selfreid.pipeline.training.gate.SCORES`): the Spearman rank
correlation between the score on the slice and the labelled number over all candidates, and the share
of correct decisions: the gate's decision (:func:`~selfreid.pipeline.training.gate.decide`: its rule at
default tolerances, then the veto of a candidate whose own calibration is uninformative) promoting each
adapted candidate over the parent, against "its labelled number is not below
the parent's". Goals (issue 14): Spearman >= 0.7 on each arm, decisions >= 0.8.

Cross-camera scores (:func:`cross_camera_scores`, reported beside the gate's own, not gate options):
the separation scores reward within-camera consistency, so these look across cameras instead, on
tracklet means: cycle consistency (a tracklet's best match in another camera has it as its best match
back), the margin of that best match over the runner-up, the excess of cross-camera matches above the
candidate's own calibrated threshold (more than one per other camera cannot all be right) and the
share of co-occurring tracklet pairs whose best match in another camera is the same tracklet. They
are judged with the plain rule "promote when the score is not below the parent's".

Each candidate's embeddings (slice and labelled set) are cached under ``.selfreid/bench/G1/<arm>-<pool>/``
(not committed), so a rerun with other scores or tolerances needs no training: ``--fresh`` recomputes.

Run: ``.venv/bin/python -m benchmarks.gate_ranking [--arms vtest,conreid]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import limit_threads, sample_data, write_result
from benchmarks.idf1_vtest import Pool, adapt, product_config, save_init, version_one, vtest_clip, vtest_pool
from selfreid.pipeline.config.service import GateConfig
from selfreid.pipeline.training.gate import SCORES, Holdout, PoolScores, decide, pool_scores

SPEARMAN_GOAL = 0.7
DECISION_GOAL = 0.8
CACHE = Path(".selfreid/bench/G1")
PARENT = "parent"


def conreid_pool(root: Path, holdout_fraction: float, ids: int = 24) -> Pool:
    """A1's dense training pool (``ids`` identities x 25 crops) with tracker-like tracklets and times;
    labels unused."""
    import cv2

    from benchmarks.adapt_conreid import _site_structure
    from selfreid.pipeline.evaluation.adaptation import HOLDOUT_IDS, per_id
    from selfreid.pipeline.training.service import holdout_mask
    from selfreid.reid_model.data import read_market, split_market

    rng = np.random.default_rng(0)
    train, _, _ = split_market(read_market(root), holdout_ids=HOLDOUT_IDS, seed=0)
    kept = set(rng.choice(sorted({i.pid for i in train}), ids, replace=False).tolist())
    train = per_id([i for i in train if i.pid in kept], 25, rng)
    groups, times = _site_structure(train, track_len=4, concurrent=3, seed=1)
    images = [cv2.imread(str(i.path)) for i in train]
    return Pool(images, [f"c{i.camera}" for i in train], groups, times, holdout_mask(groups, holdout_fraction, 0))


def _slice(pool: Pool) -> Holdout:
    images, cams, groups, times = pool.part(held=True)
    return Holdout(images, cams, groups, times)


class Arm:
    """One arm: its pool, its labelled images and how a candidate's labelled number is computed."""

    def __init__(self, name: str, pool: Pool, images: list[np.ndarray],
                 labelled: Callable[[str, np.ndarray, PoolScores], dict[str, float]], setting: str) -> None:
        self.name, self.pool, self.images, self.labelled = name, pool, images, labelled
        self.cache = CACHE / f"{name}-{setting}"  # another pool is another set of candidates


def vtest_arm(data: Path, service, client, oracle: bool, pool_crops: int | None = None) -> Arm:
    from selfreid.pipeline.evaluation.tracks import score_tracks

    clip = vtest_clip(data / "pets09-s2l1")

    def labelled(name: str, vectors: np.ndarray, scores: PoolScores) -> dict[str, float]:
        out = score_tracks(clip, vectors, name, client, calibration=scores.calibration, oracle=oracle)
        return {"label": out["idf1"], "idf1": out["idf1"], "threshold": out["threshold"],
                **({"oracle_idf1": out["oracle_idf1"]} if oracle else {})}

    pool = vtest_pool(data / "pets09-s2l1", pool_crops or service.snapshot_crops, service.holdout_fraction, seed=0)
    return Arm("vtest", pool, [c for _, c in clip.crops], labelled, f"crops{len(pool.images)}-h{service.holdout_fraction:g}")


def conreid_arm(data: Path, holdout_fraction: float, ids: int) -> Arm:
    from selfreid.pipeline.evaluation.adaptation import conreid_heldout, heldout_metrics, read_images

    root = data / "con-reid" / "bounding_box_train"
    query, gallery = conreid_heldout(root)

    def labelled(name: str, vectors: np.ndarray, scores: PoolScores) -> dict[str, float]:
        fq, fg = torch.from_numpy(vectors[: len(query)]), torch.from_numpy(vectors[len(query):])
        metrics = heldout_metrics(fq, fg, query, gallery)
        return {"label": metrics["mAP"], "mAP": metrics["mAP"], "rank1": metrics["rank1"]}

    return Arm("conreid", conreid_pool(root, holdout_fraction, ids), read_images(query) + read_images(gallery), labelled,
               f"ids{ids}-h{holdout_fraction:g}")


def _embed(model: torch.nn.Module, arm: Arm, name: str, tmp: Path) -> dict[str, np.ndarray]:
    from selfreid.reid_model.export import embed_onnx, export_onnx

    onnx = export_onnx(model, tmp / f"{arm.name}-{name}.onnx", model_version=name, slim=False)
    return {"slice": embed_onnx(onnx, _slice(arm.pool).images), "labelled": embed_onnx(onnx, arm.images)}


def candidate_names(modes: list[str], epochs: list[int], alphas: list[float]) -> list[str]:
    return [PARENT] + [f"{m}-e{e}-a{a:g}" for m in modes for e in epochs for a in alphas]


def build_features(arm: Arm, args, tmp: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every candidate's embeddings, from the cache or by training (one run per mode)."""
    from selfreid.reid_model.interpolation import interpolate_state

    folder = arm.cache
    names = candidate_names(args.modes, args.keep_epochs, args.alphas)
    cached = {n: folder / f"{n}.npz" for n in names}
    if not args.fresh and all(p.is_file() for p in cached.values()):
        return {n: dict(np.load(p)) for n, p in cached.items()}
    folder.mkdir(parents=True, exist_ok=True)
    base_cfg, _ = product_config(args.config, seed=0, epochs=max(args.keep_epochs))
    parent = version_one(base_cfg)
    parent_state = {k: v.clone() for k, v in parent.state_dict().items()}
    init = save_init(parent, base_cfg, tmp / f"{arm.name}-v1.pt")
    features = {PARENT: _embed(parent, arm, PARENT, tmp)}
    for mode in args.modes:
        cfg = base_cfg.model_copy(update={"mode": mode, "max_minutes": args.minutes})
        states: dict[int, dict[str, torch.Tensor]] = {}

        def keep(trainer, record, states=states) -> None:
            if record["epoch"] in args.keep_epochs:  # 1-based
                states[record["epoch"]] = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}

        t0 = time.monotonic()
        adapt(cfg, arm.pool, init, tmp / f"{arm.name}-{mode}", after_epoch=keep)
        print(f"{arm.name}: trained {mode} in {time.monotonic() - t0:.0f} s, kept epochs {sorted(states)}", flush=True)
        for epoch, state in states.items():
            for alpha in args.alphas:
                name = f"{mode}-e{epoch}-a{alpha:g}"
                parent.load_state_dict(interpolate_state(parent_state, state, alpha))
                features[name] = _embed(parent.eval(), arm, name, tmp)
        parent.load_state_dict(parent_state)
    for name, feats in features.items():
        np.savez(folder / f"{name}.npz", **feats)
    return features


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(np.asarray(x)[ok]) == 0:
        return float("nan")
    return float(spearmanr(np.asarray(x)[ok], np.asarray(y)[ok]).statistic)


CROSS_SCORES = ("cycle", "margin", "excess_matches", "shared_best")


def cross_camera_scores(emb: np.ndarray, held: Holdout, threshold: float, min_gap: float) -> dict[str, float]:
    """Label-free cross-camera numbers of one model on the slice (module docstring); higher is better."""
    feats, groups = emb.astype(np.float64), np.asarray(held.groups)
    keys = sorted(set(held.groups))
    means = np.stack([feats[groups == k].mean(0) for k in keys])
    means /= np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)
    cams = np.asarray([held.camera_ids[int(np.flatnonzero(groups == k)[0])] for k in keys])
    sim = means @ means.T
    best = {(i, c): int(np.flatnonzero(cams == c)[sim[i, cams == c].argmax()]) for i in range(len(keys))
            for c in set(cams) - {cams[i]}}
    cycle = [best[(j, cams[i])] == i for (i, _), j in best.items()]
    margin = [np.diff(np.sort(sim[i, cams == c])[-2:])[0] for (i, c) in best if (cams == c).sum() > 1]
    above = ((sim > threshold) & (cams[:, None] != cams[None, :])).sum(1)
    index = {k: i for i, k in enumerate(keys)}
    shared = [best[(index[a], c)] == best[(index[b], c)]
              for a, b in held.pairs(min_gap).cannot_link
              for c in set(cams) - {cams[index[a]]}]
    return {"cycle": float(np.mean(cycle)), "margin": float(np.mean(margin)) if margin else float("nan"),
            "excess_matches": -float(np.maximum(above - (len(set(cams)) - 1), 0).mean()),
            "shared_best": -float(np.mean(shared)) if shared else float("nan")}


def rank_cross_scores(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Spearman and the plain rule's decision share for each cross-camera score."""
    labels = [row["label"] for row in table.values()]
    parent = table[PARENT]
    out = {}
    for score in CROSS_SCORES:
        values = [row[f"cross_{score}"] for row in table.values()]
        correct = [(row[f"cross_{score}"] >= parent[f"cross_{score}"]) == (row["label"] >= parent["label"])
                   for name, row in table.items() if name != PARENT]
        rho = spearman(values, labels)  # None where the score is constant over the candidates
        out[score] = {"spearman": rho if np.isfinite(rho) else None, "decisions_correct": float(np.mean(correct))}
    return out


def _fresh(scores: PoolScores) -> PoolScores:
    """A copy whose ``values`` the gate rule may annotate."""
    return replace(scores, values=dict(scores.values))


def rank_scores(table: dict[str, dict[str, Any]], scores: dict[str, PoolScores]) -> dict[str, Any]:
    """Spearman and decision share per label-free score over one arm's candidates."""
    names = list(table)
    labels = [table[n]["label"] for n in names]
    out = {}
    for score in SCORES:
        cfg = GateConfig(score=score)
        values = [scores[n].values[f"score_{score}"] for n in names]
        decisions = []
        for name in names:
            if name == PARENT:
                continue
            reason, used = decide(_fresh(scores[name]), _fresh(scores[PARENT]), cfg)
            truth = table[name]["label"] >= table[PARENT]["label"]
            decisions.append({"candidate": name, "promote": reason is None, "better_by_labels": truth,
                              "score_used": used, "reason": reason})
        correct = [d["promote"] == d["better_by_labels"] for d in decisions]
        out[score] = {"spearman": spearman(values, labels), "decisions_correct": float(np.mean(correct)),
                      "decisions": decisions}
    return out


def run_arm(arm: Arm, args, service, tmp: Path) -> dict[str, Any]:
    features = build_features(arm, args, tmp)
    held = _slice(arm.pool)
    scores = {n: pool_scores(f["slice"], held, min_gap=service.gate.min_gap_s) for n, f in features.items()}
    table = {}
    for name, feats in features.items():
        table[name] = {**arm.labelled(name, feats["labelled"], scores[name]),
                       **{f"score_{s}": round(scores[name].values[f"score_{s}"], 4) for s in SCORES},
                       "calibration_threshold": round(scores[name].values["threshold"], 4),
                       **{f"cross_{k}": round(v, 4) for k, v in cross_camera_scores(
                           feats["slice"], held, scores[name].values["threshold"], service.gate.min_gap_s).items()}}
        print(arm.name, name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in table[name].items()}),
              flush=True)
    evidence = {"slice_crops": len(held), "slice_tracklets": len(set(held.groups)),
                "positive_pairs": len(held.pairs(service.gate.min_gap_s).positives),
                "cannot_link_pairs": len(held.pairs(service.gate.min_gap_s).cannot_link),
                "pool_crops": len(arm.pool.images)}
    return {"candidates": table, "ranking": rank_scores(table, scores), "cross_camera": rank_cross_scores(table),
            "slice": evidence}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="product config whose train settings run")
    parser.add_argument("--arms", default="vtest,conreid")
    parser.add_argument("--modes", default="scl,site")
    parser.add_argument("--keep-epochs", default="1,3", help="epochs after which the weights are candidates")
    parser.add_argument("--alphas", default="0.5,1", help="interpolation toward the parent (1 = trained weights)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per mode and arm")
    parser.add_argument("--conreid-holdout", type=float, default=0.3, help="share of the Con-ReID pool's tracklets in the slice")
    parser.add_argument("--conreid-ids", type=int, default=24, help="identities in the Con-ReID pool (A1: 24)")
    parser.add_argument("--pool-crops", type=int, default=None, help="vtest pool size (default: service.snapshot_crops)")
    parser.add_argument("--oracle", action="store_true", help="also the oracle IDF1 of each vtest candidate")
    parser.add_argument("--fresh", action="store_true", help="ignore cached candidate features")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    args.keep_epochs = [int(e) for e in args.keep_epochs.split(",")]
    args.alphas = [float(a) for a in args.alphas.split(",")]
    limit_threads(args.threads)

    import redis

    from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis

    data = sample_data()
    _, service = product_config(args.config, seed=0)
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedRedis(Path(tmp_name) / "redis", appendonly=False) as server:
        client = redis.Redis.from_url(server.url)
        for name in args.arms.split(","):
            arm = (vtest_arm(data, service, client, args.oracle, args.pool_crops) if name == "vtest"
                   else conreid_arm(data, args.conreid_holdout, args.conreid_ids))
            results[name] = run_arm(arm, args, service, Path(tmp_name))
        client.close()
    default = GateConfig().score
    summary = {arm: {s: {"spearman": r["ranking"][s]["spearman"], "decisions_correct": r["ranking"][s]["decisions_correct"]}
                     for s in SCORES} for arm, r in results.items()}
    print(json.dumps(summary, indent=1))
    print("cross-camera scores:", json.dumps({arm: r["cross_camera"] for arm, r in results.items()}, indent=1))
    chosen = [summary[a][default] for a in summary]
    value = min(c["spearman"] for c in chosen)
    met = all(c["spearman"] >= SPEARMAN_GOAL and c["decisions_correct"] >= DECISION_GOAL for c in chosen)
    write_result("G1", value, f"Spearman(gate score, labelled) >= {SPEARMAN_GOAL} on each arm and correct "
                 f"promote/reject >= {DECISION_GOAL} (gate.score = {default})",
                 "Spearman (worst arm)", {"gate_score": default, "summary": summary, "arms": results,
                                          "cross_camera": {arm: r["cross_camera"] for arm, r in results.items()},
                                          "candidates": candidate_names(args.modes, args.keep_epochs, args.alphas),
                                          "wall_seconds": round(time.monotonic() - started, 1)}, met=met)


if __name__ == "__main__":
    main()
