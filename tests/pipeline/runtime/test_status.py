"""Status reports on a real Redis, and ``selfreid run``'s live view of them as a person reads it."""

from __future__ import annotations

import io
import json
import time
from types import SimpleNamespace

from rich.console import Console

from selfreid.pipeline.config import parse_config
from selfreid.pipeline.orchestration.run import INIT, STAGES, _table
from selfreid.pipeline.runtime.status import (
    camera_rows,
    media_origins,
    media_position,
    publish_status,
    read_status,
    record_media_origin,
    stage_numbers,
    stage_startup,
    stage_state,
    status_key,
)

CAMERAS = {
    "hall": {"state": "finished", "fps": 0.0, "frames": 795, "written": 120, "frame_drops": 0, "crop_drops": 2,
             "source_counters": {"decoded": 795, "frames": 795}},
    "door": {"state": "running", "fps": 9.5, "frames": 400, "written": 61, "frame_drops": 3, "crop_drops": 0,
             "source_counters": {"decoded": 400, "frames": 400}},
}
INGEST = {"state": "running", "error": "", "cameras": CAMERAS,
          "pool": {"queued": 4, "written": 181, "dropped": 0, "connected": True, "last_error": ""}}
EMBEDDER = {"state": "running", "model_version": "2", "embedded": 1234, "batches": 40, "last_batch_ms": 51.25,
            "rejected": {"corrupt_jpeg": 3}, "errors": 0, "swaps": 1}


def _process(state: str):
    return SimpleNamespace(state=state, process=SimpleNamespace(pid=4242))


def _render(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=220, color_system=None).print(renderable)
    return out.getvalue()


def test_stage_words_and_camera_rows():
    assert stage_numbers("ingest", INGEST) == "2 camera(s): 1 finished, 1 running; pool: 181 written, 4 queued"
    assert stage_numbers("embedder", EMBEDDER) == (
        "model 2, 1,234 crops embedded in 40 batches (last 51.2 ms); rejected: corrupt_jpeg 3")
    assert stage_numbers("train", {"state": "idle", "last_outcome": "promoted", "cycle": 3, "pool_count": 0}) == (
        "last outcome promoted, cycle 3")
    assert camera_rows(INGEST) == [("door", "running", "9.5", "400", "61", "3/0"),
                                   ("hall", "finished", "-", "795", "120", "0/2")]
    now = time.time()
    fresh, old = {"state": "running", "updated": now - 1}, {"state": "running", "updated": now - 40}
    assert stage_state("embedder", fresh, "running", now) == "running"
    assert stage_state("embedder", old, "running", now) == "stale"
    assert stage_state("embedder", fresh, "finished", now) == "finished"  # the process's end wins
    assert stage_state("embedder", None, "running", now) == "starting"
    done = {**INGEST, "cameras": {k: {**v, "state": "finished"} for k, v in CAMERAS.items()}, "updated": now}
    assert stage_state("ingest", done, "running", now) == "finished"  # every camera ended


def test_the_live_view_is_a_table_people_read(tmp_path, redis_client):
    cfg = parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "st"}})
    publish_status(redis_client, "st", "ingest", INGEST)
    publish_status(redis_client, "st", "embedder", EMBEDDER, "embedder-host-1")
    publish_status(redis_client, "st", "embedder", EMBEDDER, "embedder-host-0")  # an earlier run's process
    redis_client.hset(status_key("st", "embedder", "embedder-host-0"), "updated", json.dumps(time.time() - 40))
    publish_status(redis_client, "st", "backfill", {"state": "running", "version": "2", "done_pct": 40.0,
                                                    "planned": 500, "carried": 7, "tracklets": 20}, "2")
    sup = SimpleNamespace(
        cfg=cfg, reason="", missing=[], specs=list(STAGES),
        running={"models": _process("finished"), "ingest": _process("finished"), "embedder": _process("running"),
                 "api": _process("running")},
        read_status=lambda: read_status(redis_client, "st"),
    )
    assert INIT.name == "models"
    text = _render(_table(sup))
    assert "=" not in text and "pool(" not in text and "source_counters" not in text  # no raw key=value dumps
    lines = {line.split()[0] + " " + line.split()[1]: line for line in text.splitlines() if len(line.split()) > 1}
    assert "2 camera(s): 1 finished, 1 running" in lines["ingest finished"]  # the ended process wins
    assert "door finished" in lines and "hall finished" in lines  # no camera of a finished ingest reads running
    assert "model 2, 1,234 crops embedded" in lines["embedder host-1"] and "running" in lines["embedder host-1"]
    assert lines["embedder host-0"].split()[2] == "stale" and lines["embedder host-0"].rstrip().endswith("40 s ago")
    assert "starting the HTTP API on http://127.0.0.1:8000" in lines["api starting"]
    assert "version 2: 40.0% of 500 retained crops re-embedded, 7 of 20" in lines["backfill:2 running"]
    assert lines["matcher waiting"].split()[2] == "-"


def test_each_stage_says_what_it_loads_before_its_first_report(tmp_path):
    cfg = parse_config({"data_dir": str(tmp_path)})
    assert stage_startup("ingest", cfg) == "opening 0 camera(s), loading the yolo detector (device auto)"
    assert stage_startup("embedder", cfg).startswith("loading the production model")


def test_media_origins_of_recordings_give_positions(redis_client):
    for origin in (1000.0, 5000.0, 1000.0):
        record_media_origin(redis_client, "st", "hall", origin)
    assert media_origins(redis_client, "st") == {"hall": [1000.0, 5000.0]}
    assert media_position([1000.0, 5000.0], 1065.5) == "1:05"
    assert media_position([1000.0, 5000.0], 5000.0 + 3723) == "1:02:03"
    assert media_position([1000.0], 999.0) is None and media_position([], 5.0) is None
