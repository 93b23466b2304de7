"""``selfreid ingest`` takes a new camera share in its own process (a restart would cost a Kubernetes
back-off) and ends only on a signal, leaving the replica set as a real stop does."""

from __future__ import annotations

import os
import signal
import threading

import yaml
from typer.testing import CliRunner

import selfreid.pipeline.ingest.service as service
from selfreid.pipeline.cli import app
from selfreid.pipeline.ingest.camera_assignment import ENV_VAR, MEMBER_ENV, TTL_ENV, Membership

PREFIX = "share"
TTL_S = 0.6


def test_a_new_share_runs_ingest_again_in_the_same_process(shared_data, redis_server, redis_client, tmp_path,
                                                           monkeypatch) -> None:
    vtest = str(shared_data / "pets09-s2l1" / "vtest.avi")
    cameras = [{"id": f"cam{i}", "uri": vtest, "realtime": True, "params": {"loop": True, "fps": 2}} for i in range(4)]
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({"pool": {"prefix": PREFIX}, "ingest": {
        "cameras": cameras, "detector": {"plugin": "yolox"}, "metrics_port": None, "status_interval_s": 0.2}}))
    for name, value in {ENV_VAR: "auto", MEMBER_ENV: "host-a", TTL_ENV: str(TTL_S), "REDIS_URL": redis_server.url,
                        "SELFREID_DATA_DIR": str(tmp_path / "site")}.items():
        monkeypatch.setenv(name, value)

    other, other_gone = Membership(redis_client, PREFIX, TTL_S, "host-c"), threading.Event()
    other.beat()  # host-c shares the cameras: host-a starts with cam3 only (rendezvous over both)

    def keep_beating() -> None:  # host-c alive until `other_gone`
        while not other_gone.wait(0.1):
            other.beat()

    beating = threading.Thread(target=keep_beating)
    beating.start()
    shares: list[list[str]] = []
    real_run_ingest = service.run_ingest

    def run_ingest(cfg, url, stop, max_frames=None, on_status=None, on_frame=None):
        run = len(shares)
        shares.append([])

        def seen(stats, pool) -> None:
            if not shares[run] and stats:
                shares[run] = sorted(stats)
                if run == 0:
                    other_gone.set()  # host-c dies: host-a's share grows to every camera
                else:
                    os.kill(os.getpid(), signal.SIGTERM)  # the second run is up: stop the command
            on_status(stats, pool)

        return real_run_ingest(cfg, url, stop, max_frames, seen, on_frame)

    monkeypatch.setattr(service, "run_ingest", run_ingest)
    try:
        result = CliRunner().invoke(app, ["ingest", "--config", str(config)])
    finally:
        other_gone.set()
        beating.join()
    assert result.exit_code == 0, result.output
    assert shares == [["cam3"], ["cam0", "cam1", "cam2", "cam3"]]
    assert redis_client.zscore(f"{PREFIX}:ingest:members", "host-a") is None  # the signal: a real stop, it left
