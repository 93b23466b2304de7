"""Prometheus helpers: counters advance by deltas of cumulative snapshots; the endpoint serves them."""

from __future__ import annotations

import urllib.request

from selfreid.pipeline.runtime.metrics import StageMetrics, start_metrics_server


def test_snapshots_become_counters_gauges_and_states_on_an_http_endpoint():
    cams = StageMetrics(
        "demo", counters={"frames": "f"}, gauges={"fps": "g"}, states={"state": ("s", ["running", "failed"])}
    )
    pool = StageMetrics("demo_pool", gauges={"queued": "q"}, labels=())
    cams.update({"frames": 3, "fps": 2.5, "state": "running", "ignored": "x"}, camera="a")
    cams.update({"frames": 10, "state": "failed"}, camera="a")
    cams.update({"frames": 4}, camera="b")
    cams.update({"frames": 2}, camera="b")  # a counter never goes back (a restarted source)
    pool.update({"queued": 7})
    server = start_metrics_server(0, cams, pool, addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    assert 'selfreid_demo_frames_total{camera="a"} 10.0' in text
    assert 'selfreid_demo_frames_total{camera="b"} 4.0' in text
    assert 'selfreid_demo_fps{camera="a"} 2.5' in text
    assert 'selfreid_demo_state{camera="a",selfreid_demo_state="failed"} 1.0' in text
    assert 'selfreid_demo_state{camera="a",selfreid_demo_state="running"} 0.0' in text
    assert "selfreid_demo_pool_queued 7.0" in text
