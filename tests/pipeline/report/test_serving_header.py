"""In a browser: across a promotion the report says once which version serves and how complete its
gallery is, and shows the backfilled gallery of the new version (identities carried over)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from chromium import render
from selfreid.pipeline.config import parse_config
from selfreid.pipeline.report.site import collect_report, render_html
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.serving.backfill import Backfill
from selfreid.pipeline.serving.search import IdentitySearch
from selfreid.plugins.contracts import Crop
from selfreid.plugins.matchers.gallery_store import GalleryStore, TrackletRecord, tracklet_key

T0 = 1.7e9
LAYOUT = [("hall", 1, 0.0, 1), ("door", 1, 30.0, 1), ("hall", 2, 1.0, 2)]  # (camera, track, start, person)


class Model:
    """A stand-in ONNX model of one version: the crop's mean colour, 8-d."""

    dim = 8

    def __init__(self, version: str) -> None:
        self.model_version = version

    def embed_versioned(self, images):
        out = np.stack([np.resize(img.reshape(-1, 3).mean(0), self.dim) + 1.0 for img in images]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True), self.model_version

    def embed(self, images):
        return self.embed_versioned(images)[0]


@pytest.fixture()
def site(tmp_path, redis_client):
    """Version 1's gallery of three tracklets (person 1 on both cameras), their crops in the pool, all of
    them already given to the live embedder; version 2 is about to be promoted."""
    cfg = parse_config({"data_dir": str(tmp_path), "pool": {"prefix": "rep"}})
    pool = open_pool(cfg, redis_client)
    jpeg = cv2.imencode(".jpg", np.full((64, 32, 3), 90, np.uint8))[1].tobytes()
    pool.add([Crop(cam, T0 + start + k, k, (0, 0, 32, 64), track, 0.9, jpeg) for cam, track, start, _ in LAYOUT
              for k in range(4)])
    pool.ack("embedder", [c.crop_id for c in pool.read("embedder", "live", 100)])
    gallery = GalleryStore(redis_client, "rep")
    gallery.register_version("1", 8)
    records = [TrackletRecord(tracklet_key(cam, track, T0 + start), cam, track, T0 + start, T0 + start + 3, 4, 4.0,
                              np.ones(8, np.float32), person) for cam, track, start, person in LAYOUT]
    gallery.save_tracklets("1", records)
    gallery.save_thumbnails({r.key: jpeg for r in records})
    return cfg, pool


def _page(cfg, client, version: str, tmp_path, name: str) -> str:
    search = IdentitySearch(cfg, client, embedder=Model(version))
    page = tmp_path / f"{name}.html"
    page.write_text(render_html(collect_report(cfg, search)))
    return render(page, tmp_path / f"{name}.png")


def _header(dom: str) -> str:
    return " ".join(re.search(r'<div class="meta" id="serving">(.*?)</div>', dom, re.S).group(1).split())


def test_the_report_states_the_serving_version_once_and_shows_its_backfilled_gallery(site, redis_client, tmp_path):
    cfg, pool = site
    before = _page(cfg, redis_client, "1", tmp_path, "before")
    assert _header(before).startswith("Model version 1 serves; its gallery holds 3 tracklet(s)")
    assert before.count(" serves") == 1

    # version 2 serves without a backfill: its gallery is empty, the page shows version 1's, and says so
    # without a second "serves"
    unfilled = _page(cfg, redis_client, "2", tmp_path, "unfilled")
    assert _header(unfilled).startswith("Model version 2 serves; its gallery holds 0 tracklet(s)")
    assert unfilled.count(" serves") == 1 and "come from version 1's gallery" in unfilled

    Backfill(redis_client, "rep", pool, Model("2"), "2").run()  # what the registry runs before the switch
    after = _page(cfg, redis_client, "2", tmp_path, "after")
    assert _header(after).startswith(
        "Model version 2 serves; gallery complete: 3 of 3 earlier tracklets carried over; 3 tracklet(s) in its gallery now")
    assert after.count(" serves") == 1 and "come from version" not in after
    # version 2's own gallery: person 1 seen by both cameras, with the ids carried over
    person = re.search(r'<div class="identity multi" data-global-id="(\d+)">(.*?)</h3>', after, re.S)
    assert person and person.group(1) == "1" and "door, hall" in person.group(2)
    assert 'data-global-id="2"' in after and after.count("<figure>") == 3
    assert (tmp_path / "after.png").stat().st_size > 5_000
