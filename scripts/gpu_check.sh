#!/usr/bin/env bash
# One short GPU check (< 8 min on one GPU) of the CUDA paths that never run on the CPU-only CI:
#   1. onnxruntime CUDA EP vs CPU EP: the ReID embedder export and the YOLOX-nano detector, same inputs
#      (max |diff|, cosine of embeddings, detector boxes), and their latency on each provider;
#   2. one SCL training step (reid_model SCLTrainer.step), AMP vs fp32, median of timed steps;
#   3. a FAISS GPU index: build + query vs the CPU exact index (recall@10, times);
#   4. NCCL: a one-rank process group and an all_reduce; TensorRT EP: offered or not;
#   5. C1 (benchmarks/cameras_per_box.py) with ingest and embedder on the GPU, a short profile.
# Everything goes into one JSON: $OUT/gpu_check.json (OUT defaults to ./gpu_check_out), plus C1.json.
#
# Usage (repository root, on the GPU machine):  bash scripts/gpu_check.sh
# Installs into .venv-gpu (onnxruntime-gpu and faiss-gpu cannot share an environment with the CPU
# wheels). SELFREID_WHEELHOUSE=/path installs offline from a folder of wheels; SELFREID_GPU_PY=/path/python
# uses an existing environment that already has the [gpu] extra instead of installing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
start=$(date +%s)
step() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || {
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed)"; exit 2; }

PY=${SELFREID_GPU_PY:-}
if [ -z "$PY" ]; then
  step "installing .venv-gpu"
  [ -x .venv-gpu/bin/python ] || python3 -m venv .venv-gpu
  PIP=(.venv-gpu/bin/python -m pip install -q)
  [ -n "${SELFREID_WHEELHOUSE:-}" ] && PIP+=(--no-index --find-links "$SELFREID_WHEELHOUSE")
  "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
  "${PIP[@]}" -e ".[gpu]" py-spy
  PY=.venv-gpu/bin/python
fi
export YOLO_OFFLINE=1 YOLO_CONFIG_DIR=${YOLO_CONFIG_DIR:-$PWD/.yolo}

step "CUDA EP parity, SCL step AMP vs fp32, FAISS GPU, NCCL"
timeout 240 "$PY" - "$OUT/gpu_check.json" <<'EOF'
import json, os, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

out_path = Path(sys.argv[1])
report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}


def timed(fn, reps, warmup=2, sync=torch.cuda.synchronize):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 3)


def section(name):
    def wrap(fn):
        try:
            report[name] = fn()
        except Exception as exc:  # one failing path must not hide the others
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(report[name])[:400], flush=True)
    return wrap


@section("onnxruntime")
def _ort():
    import onnxruntime as ort
    from selfreid.reid_model.config import ModelConfig
    from selfreid.reid_model.export import export_onnx
    from selfreid.reid_model.model import build_model
    from selfreid.plugins.detectors.yolox import YoloxOnnxDetector

    res = {"version": ort.__version__, "providers": ort.get_available_providers()}
    res["tensorrt_ep_offered"] = "TensorrtExecutionProvider" in res["providers"]
    model = build_model(ModelConfig(backbone="mobilenet_v2", input_size=(128, 64), pretrained="none"))
    path = export_onnx(model, Path(tempfile.mkdtemp()) / "embedder.onnx")
    x = np.random.default_rng(0).standard_normal((64, 3, 128, 64)).astype(np.float32)
    sessions = {p: ort.InferenceSession(str(path), providers=[p]) for p in ("CUDAExecutionProvider", "CPUExecutionProvider")}
    name = sessions["CPUExecutionProvider"].get_inputs()[0].name
    outs = {p: s.run(None, {name: x})[0] for p, s in sessions.items()}
    a, b = outs["CUDAExecutionProvider"], outs["CPUExecutionProvider"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    res["embedder"] = {
        "max_abs_diff": float(np.abs(a - b).max()),
        "min_cosine": float(cos.min()),
        "ms_per_batch64": {p: timed(lambda s=s: s.run(None, {name: x}), 20, sync=lambda: None) for p, s in sessions.items()},
        "session_providers": sessions["CUDAExecutionProvider"].get_providers(),
    }
    import cv2
    from selfreid.plugins.assets import shared_data_dir
    data = shared_data_dir()
    if data is not None:
        cap = cv2.VideoCapture(str(data / "pets09-s2l1" / "vtest.avi"))
        frames = [cap.read()[1] for _ in range(8)]
        dets = {d: YoloxOnnxDetector(YoloxOnnxDetector.Settings(batch_frames=True), device=d) for d in ("cuda:0", "cpu")}
        boxes = {d: det.detect(frames) for d, det in dets.items()}
        diff = max(
            (float(np.abs(np.array([x.box for x in g]) - np.array([x.box for x in c])).max()) if len(g) == len(c) and g else 0.0)
            for g, c in zip(boxes["cuda:0"], boxes["cpu"])
        )
        res["yolox"] = {
            "same_box_counts": [len(g) for g in boxes["cuda:0"]] == [len(c) for c in boxes["cpu"]],
            "max_box_diff_px": diff,
            "ms_per_batch8": {d: timed(lambda det=det: det.detect(frames), 10, sync=lambda: None) for d, det in dets.items()},
            "session_providers": dets["cuda:0"].session.get_providers(),
        }
    return res


@section("scl_step")
def _scl():
    from selfreid.reid_model.config import ModelConfig, TrainConfig
    from selfreid.reid_model.data import ArrayCropDataset
    from selfreid.reid_model.trainer import SCLTrainer

    pool, batch, size = 2000, 64, (256, 128)
    res = {"pool": pool, "batch": batch, "input_size": list(size), "backbone": "resnet50"}
    for amp in (False, True):
        cfg = TrainConfig(model=ModelConfig(backbone="resnet50", input_size=size, pretrained="none"), batch_size=batch,
                          num_workers=0, seed=0, device="cuda", amp=amp)
        trainer = SCLTrainer(cfg, progress=False)
        trainer._setup(ArrayCropDataset([np.zeros((1, 1, 3), np.uint8)] * pool, [i % 6 for i in range(pool)]), None)
        trainer.banks.fill(torch.arange(pool), torch.randn(pool, cfg.model.global_dim),
                           torch.randn(pool, cfg.model.num_stripes, cfg.model.local_dim))
        x = torch.randn(batch, 3, *size)
        idx = torch.randperm(pool)[:batch]
        res["amp_ms" if amp else "fp32_ms"] = timed(lambda: trainer.step(x, idx, epoch=cfg.scl.warmup_epochs), 10, warmup=3)
        res["peak_mem_mb_amp" if amp else "peak_mem_mb_fp32"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    res["amp_speedup"] = round(res["fp32_ms"] / res["amp_ms"], 3)
    return res


@section("faiss")
def _faiss():
    import faiss

    n, d, q, k = 1_000_000, 512, 1000, 10
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(n, q, replace=False)] + 0.05 * rng.standard_normal((q, d), dtype=np.float32)
    res = {"gpus": faiss.get_num_gpus(), "n": n, "dim": d, "queries": q}
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb[:100_000])
    _, truth = cpu.search(xq, k)  # exact on the first 100k: the recall reference
    gres = faiss.StandardGpuResources()
    t = time.perf_counter()
    flat = faiss.index_cpu_to_gpu(gres, 0, faiss.IndexFlatIP(d))
    flat.add(xb)
    res["flat_build_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    flat.search(xq, k)
    res["flat_query_ms_per_1000"] = round((time.perf_counter() - t) * 1000, 2)
    t = time.perf_counter()
    ivf = faiss.index_cpu_to_gpu(gres, 0, faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, 1024, faiss.METRIC_INNER_PRODUCT))
    ivf.train(xb[:100_000])
    ivf.add(xb[:100_000])
    res["ivf_build_s_100k"] = round(time.perf_counter() - t, 3)
    ivf.nprobe = 32
    t = time.perf_counter()
    _, found = ivf.search(xq, k)
    res["ivf_query_ms_per_1000"] = round((time.perf_counter() - t) * 1000, 2)
    res["ivf_recall_at_10_vs_exact_100k"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
    return res


@section("nccl")
def _nccl():
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    t = torch.ones(1 << 20, device="cuda")
    dist.all_reduce(t)
    ok = bool(t[0].item() == 1.0)
    dist.destroy_process_group()
    return {"available": dist.is_nccl_available(), "one_rank_all_reduce_ok": ok}


out_path.write_text(json.dumps(report, indent=2) + "\n")
EOF

step "C1 with the GPU (short profile)"
timeout 300 "$PY" -m benchmarks.cameras_per_box --device cuda:0 --levers batch,fit \
  --throughput-cameras 8 --throughput-s 90 --warmup-s 30 --profile-s 30 --bare-s 10 --minutes 1.5 --tries 1 \
  --data-dir "$OUT/c1" || echo "C1 failed or timed out (exit $?)"
cp benchmarks/results/C1.json "$OUT/C1.json" 2>/dev/null || true
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
report = json.loads((out / "gpu_check.json").read_text())
c1 = out / "C1.json"
report["C1"] = json.loads(c1.read_text()) if c1.is_file() else {"error": "no C1 result (see gpu_check.log)"}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
EOF
rm -rf "$OUT/c1"
step "done: $OUT/gpu_check.json"
