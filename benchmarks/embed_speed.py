"""P2: ONNX Runtime vs torch eager throughput of the serving embedding, same model, batch 32 at 256x128.

Model: the ReID model on the ImageNet MobileNetV2 backbone (offline weights), exported with
``reid_model.export.export_onnx``; both runtimes get the same preprocessed batch (real vtest.avi crops
resized to 256x128), so the number compares inference only. Threads: 2 for both (torch
``set_num_threads``, ORT ``intra_op_num_threads``). Parity: the worst cosine between the two outputs.

Run: ``.venv/bin/python -m benchmarks.embed_speed [--iters 15]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import write_result

BATCH = 32
THREADS = 2


def _crops(n: int) -> list[np.ndarray]:
    from selfreid.pipeline.evaluation.vtest import load_gt, read_crops, virtual_cameras
    from selfreid.plugins.assets import shared_data_dir

    data = shared_data_dir() / "pets09-s2l1"
    boxes = virtual_cameras(load_gt(data / "gt_frames_0001-0400.txt", last_frame=40))
    return [c for _, c in read_crops(data / "vtest.avi", boxes, every_k=1)][:n]


def _interleaved(fns: dict, iters: int) -> dict[str, list[float]]:
    """Time each runtime's batch in turn, ``iters`` rounds, so load from other jobs hits both alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=15, help="timed batches per runtime")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    from selfreid.plugins.embedders.onnx_embedder import OnnxEmbedder, preprocess
    from selfreid.reid_model.config import ModelConfig
    from selfreid.reid_model.export import export_onnx
    from selfreid.reid_model.model import build_model

    model = build_model(ModelConfig(backbone="mobilenet_v2")).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", model_version="bench")
        embedder = OnnxEmbedder(OnnxEmbedder.Settings(model=str(path), device="cpu", threads=THREADS))
        session, name = embedder._current().session, embedder._current().input_name
        batch = preprocess(_crops(BATCH), embedder.input_spec)
        tensor = torch.from_numpy(batch)
        with torch.inference_mode():
            times = _interleaved({"torch": lambda: model.embed(tensor), "ort": lambda: session.run(None, {name: batch})},
                                 args.iters)
            reference = model.embed(tensor).numpy()
        exported = session.run(None, {name: batch})[0]
    torch_times, ort_times = times["torch"], times["ort"]
    torch_rate, ort_rate = BATCH * len(torch_times) / sum(torch_times), BATCH * len(ort_times) / sum(ort_times)
    cos = (reference * exported).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(exported, axis=1))
    ratio = ort_rate / torch_rate
    details = {
        "model": "ReIDModel(mobilenet_v2, ImageNet weights) serving embedding, 4096-d",
        "batch": BATCH,
        "input": "256x128, real vtest.avi crops, preprocessed once for both",
        "threads": THREADS,
        "iters": args.iters,
        "onnxruntime_images_per_s": round(ort_rate, 1),
        "torch_eager_images_per_s": round(torch_rate, 1),
        "onnxruntime_batch_ms_median": round(1000 * float(np.median(ort_times)), 1),
        "torch_batch_ms_median": round(1000 * float(np.median(torch_times)), 1),
        "provider": embedder.provider,
        "parity_min_cosine": float(cos.min()),
        "note": "CPU shared with other jobs while measured; batches of the two runtimes are interleaved",
    }
    write_result("P2", ratio, ">= 2.0", "x (ORT / torch images/s)", details, met=ratio >= 2.0)
    print(f"P2: onnxruntime {ort_rate:.1f} img/s, torch {torch_rate:.1f} img/s, ratio {ratio:.2f}, "
          f"parity {cos.min():.6f}")


if __name__ == "__main__":
    main()
