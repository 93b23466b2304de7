"""Security and privacy, one row each in docs/reliability.md: the Redis password, the API token, no
unsafe deserialisation in the source, the privacy retention, and forgetting one person.

Everything runs on a real Redis (the session's embedded server), real HTTP (FastAPI's TestClient) and
the real CLI; each test records what it measured through ``observe``.
"""

from __future__ import annotations

import ast
import logging
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from selfreid.pipeline.cli import app
from selfreid.pipeline.config import ApiConfig, AppConfig, ConfigError, load_config, parse_config
from selfreid.pipeline.runtime.pool import open_pool
from selfreid.pipeline.runtime.redis_conn import EmbeddedRedis
from selfreid.pipeline.serving.api_auth import COOKIE, exposure_warning, warn_if_exposed
from selfreid.pipeline.serving.embedding_store import EmbeddingStore
from selfreid.pipeline.serving.match import run_matcher
from selfreid.pipeline.serving.privacy import enforce_retention, forget_identity
from selfreid.plugins.contracts import Crop, Embedding
from selfreid.plugins.matchers.cross_camera import CrossCameraMatcher
from selfreid.plugins.matchers.gallery_store import GalleryStore, tracklet_key

REPO = Path(__file__).resolve().parents[2]
PREFIX = "sec"
TOKEN = "0123456789abcdef-test-token"
DIM = 32


def security(case: str, expected: str) -> pytest.MarkDecorator:
    return pytest.mark.reliability("security", case=case, expected=expected)


def one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- Redis password
@security("network Redis URL without a password",
          "config error naming redis.url and both fixes (password in the URL, or REDIS_PASSWORD)")
def test_network_redis_needs_a_password(observe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    site = tmp_path / "site.yaml"
    site.write_text("redis:\n  url: redis://redis:6379/0\n")
    with pytest.raises(ConfigError) as error:
        load_config(site)
    message = str(error.value)
    assert "'redis.url'" in message and "redis://:PASSWORD@host:6379/0" in message and "REDIS_PASSWORD" in message
    observe(f"load_config: {message}")
    monkeypatch.setenv("REDIS_URL", "rediss://default@redis.example:6380/0")  # a user name is not a password
    with pytest.raises(ConfigError, match="must require a password"):
        load_config(site)
    monkeypatch.delenv("REDIS_URL")
    cli = CliRunner().invoke(app, ["config", "check", str(site)])
    assert cli.exit_code == 2 and "redis.url" in cli.output and "Traceback" not in cli.output
    observe(f"`selfreid config check`: exit {cli.exit_code}")


@security("REDIS_PASSWORD with a password-less redis.url; `config show`",
          "the password is merged into the URL; `config show` prints *** instead of it")
def test_redis_password_from_the_environment(observe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret/with:odd@chars")
    site = tmp_path / "site.yaml"
    site.write_text("redis:\n  url: redis://redis:6379/0\n")
    url = load_config(site).redis.url
    assert redis.connection.parse_url(url)["password"] == "s3cret/with:odd@chars"
    shown = CliRunner().invoke(app, ["config", "show", "-c", str(site)])
    assert shown.exit_code == 0 and "s3cret" not in shown.output and "redis://:***@redis:6379/0" in shown.output
    observe(f"merged URL parses to the password; config show prints {one_line(shown.output).split('url: ')[1].split()[0]}")


@security("embedded Redis (url: null) reached by another user or over TCP",
          "impossible: no TCP port, socket and its folder are owner-only (0700)")
def test_embedded_redis_is_private(observe, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        port = client.config_get("port")["port"]
    finally:
        client.close()
    socket_path = Path(redis_server.url.removeprefix("unix://"))
    socket_mode, folder_mode = (stat.S_IMODE(p.stat().st_mode) for p in (socket_path, socket_path.parent))
    assert port == "0" and socket_mode & 0o077 == 0 and folder_mode & 0o077 == 0
    monkeypatch.setenv("REDIS_URL", redis_server.url)  # how `selfreid run` hands it to its stages
    assert load_config(None).redis.url == redis_server.url
    observe(f"port {port}; socket mode {socket_mode:o}, folder mode {folder_mode:o}; its unix:// URL passes "
            "the config check without a password")


# --------------------------------------------------------------------------- API token
@pytest.fixture()
def token_cfg(tmp_path: Path) -> AppConfig:
    return parse_config({"data_dir": str(tmp_path), "pool": {"prefix": PREFIX}, "api": {"token": TOKEN}})


def _api(cfg: AppConfig, url: str, **kwargs):
    from fastapi.testclient import TestClient

    from selfreid.pipeline.serving.api import create_app

    return TestClient(create_app(cfg, url, **kwargs), follow_redirects=False)


@security("API request without the token, or with a wrong one (api.token set)",
          "401 on every endpoint but /health, nothing served")
def test_api_refuses_requests_without_the_token(observe, token_cfg, redis_server, redis_client) -> None:
    api = _api(token_cfg, redis_server.url)
    requests = [("GET", "/identities"), ("GET", "/report"), ("GET", "/"), ("POST", "/search"), ("GET", "/docs"),
                ("GET", "/openapi.json")]
    codes = {f"{m} {p}": api.request(m, p, content=b"x" if m == "POST" else None).status_code for m, p in requests}
    wrong = {"bearer": api.get("/identities", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code,
             "cookie": api.get("/identities", cookies={COOKIE: "wrong-token-0123456789"}).status_code,
             "query on POST": api.post(f"/search?token={TOKEN}", content=b"x").status_code}
    refused = api.get("/identities")
    assert set(codes.values()) == {401} and set(wrong.values()) == {401}
    assert refused.headers["www-authenticate"] == "Bearer" and "identities" not in refused.text
    assert api.get("/health").status_code == 200
    observe(f"no token: {codes}; wrong token: {wrong}; /health 200; body: {refused.json()['detail']}")


@security("API request with the token (header, or a browser's cookie set by /report?token=...)",
          "served; the report's search form works through the cookie and the token leaves the URL")
def test_api_serves_the_token_holder(observe, token_cfg, redis_server, redis_client, onnx_model) -> None:
    from selfreid.plugins.embedders.onnx_embedder import OnnxEmbedder

    api = _api(token_cfg, redis_server.url, embedder=OnnxEmbedder(OnnxEmbedder.Settings(model=str(onnx_model))))
    header = api.get("/identities", headers={"Authorization": f"Bearer {TOKEN}"})
    assert header.status_code == 200 and header.json()["identities"] == []
    login = api.get(f"/report?token={TOKEN}&x=1")
    cookie = login.headers["set-cookie"].lower()
    assert login.status_code == 303 and login.headers["location"] == "/report?x=1"
    assert f"{COOKIE}={TOKEN}".lower() in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert api.cookies.get(COOKIE) == TOKEN  # the browser keeps it ...
    jpeg = _jpeg(np.full((128, 64, 3), 90, np.uint8))
    search = api.post("/search", content=jpeg, headers={"Content-Type": "image/jpeg"})  # ... and the form's fetch sends it
    assert search.status_code == 200 and search.json()["people"] == []
    observe(f"header: {header.status_code}; /report?token=: {login.status_code} to {login.headers['location']}, "
            f"cookie HttpOnly SameSite=Strict; search form POST with the cookie: {search.status_code} "
            f"({search.json()['message']})")


@security("API bound to a non-loopback address without a token",
          "it starts (containers bind 0.0.0.0) and logs a warning naming the fix; the default binds 127.0.0.1")
def test_exposed_api_without_token_warns(observe, caplog: pytest.LogCaptureFixture) -> None:
    assert ApiConfig().host == "127.0.0.1"
    for host in ("127.0.0.1", "::1", "localhost"):
        assert exposure_warning(ApiConfig(host=host)) is None
    assert exposure_warning(ApiConfig(host="0.0.0.0", token=TOKEN)) is None
    with caplog.at_level(logging.WARNING, logger="selfreid.pipeline.serving.api_auth"):
        warn_if_exposed(ApiConfig(host="0.0.0.0"))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "without a token" in warning and "SELFREID_API_TOKEN" in warning
    observe(f"default host 127.0.0.1; 0.0.0.0 without token logs: {warning}")


# --------------------------------------------------------------------------- unsafe deserialisation
SCANNED = ("pipeline", "plugins", "reid_model")


def unsafe_calls(source: str, name: str = "<src>") -> list[str]:
    """torch.load without weights_only=True, pickle (import or use) and np.load(allow_pickle=True)."""

    def keyword_true(call: ast.Call, keyword: str) -> bool:
        return any(k.arg == keyword and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)

    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in ("pickle", "cPickle", "dill")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in ("pickle", "cPickle", "dill"):
                found.append(f"{where} from {node.module} import")
            elif node.module == "torch" and any(a.name == "load" for a in node.names):
                found.append(f"{where} from torch import load")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if owner == "torch" and node.func.attr == "load" and not keyword_true(node, "weights_only"):
                found.append(f"{where} torch.load without weights_only=True")
            elif owner in ("pickle", "dill"):
                found.append(f"{where} {owner}.{node.func.attr}")
            elif owner in ("np", "numpy") and node.func.attr == "load" and keyword_true(node, "allow_pickle"):
                found.append(f"{where} {owner}.load(allow_pickle=True)")
    return found


def test_the_scanner_catches_every_unsafe_form() -> None:
    bad = ["import pickle", "from pickle import loads", "import dill", "from torch import load",
           "torch.load(p)", "torch.load(p, weights_only=False)", "pickle.loads(b)", "np.load(p, allow_pickle=True)"]
    assert all(unsafe_calls(snippet) for snippet in bad), [s for s in bad if not unsafe_calls(s)]
    assert unsafe_calls("torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p, allow_pickle=False)") == []


@security("unsafe deserialisation in the source (torch.load, pickle, np.load)",
          "none: every torch.load has weights_only=True, no pickle, no np.load(allow_pickle=True)")
def test_no_unsafe_deserialisation_in_the_source(observe) -> None:
    files = [p for folder in SCANNED for p in sorted((REPO / folder).rglob("*.py"))]
    found = [hit for p in files for hit in unsafe_calls(p.read_text(), str(p.relative_to(REPO)))]
    loads = sum(p.read_text().count("torch.load(") for p in files)
    assert not found, found
    observe(f"{len(files)} files of {', '.join(SCANNED)} parsed; {loads} torch.load call(s), all weights_only=True; "
            "no pickle, no allow_pickle=True")


# --------------------------------------------------------------------------- test data: two people
def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def _site(tmp_path: Path, **pool_params) -> AppConfig:
    return parse_config({"data_dir": str(tmp_path), "pool": {"prefix": PREFIX, "params": pool_params},
                         "matcher": {"matcher": {"params": {"threshold": 0.8, "min_crops": 3}}}})


def _matcher(client: redis.Redis) -> CrossCameraMatcher:
    return CrossCameraMatcher(CrossCameraMatcher.Settings(threshold=0.8, min_crops=3), client=client, prefix=PREFIX)


class Person:
    """One synthetic person: an appearance (a direction in feature space, a colour) and their crops."""

    def __init__(self, axis: int, colour: tuple[int, int, int], seed: int) -> None:
        self.axis, self.colour, self.rng = axis, colour, np.random.default_rng(seed)
        self.crops: list[Crop] = []
        self.vectors: list[np.ndarray] = []

    def sighting(self, camera_id: str, track_id: int, start: float, n: int = 4) -> list[tuple[Crop, np.ndarray]]:
        out = []
        for i in range(n):
            image = np.zeros((128, 64, 3), np.uint8) + np.array(self.colour, np.uint8)
            band = len(self.crops) % 16 * 8
            image[band:band + 8] = 255  # every crop's bytes differ
            vec = np.eye(DIM, dtype=np.float32)[self.axis] + self.rng.normal(0, 0.05, DIM).astype(np.float32)
            crop = Crop(camera_id, start + i * 0.5, i, (0, 0, 64, 128), track_id, 0.9, _jpeg(image))
            self.crops.append(crop)
            self.vectors.append(vec / np.linalg.norm(vec))
            out.append((crop, self.vectors[-1]))
        return out


def ingest_like(cfg: AppConfig, client: redis.Redis, sightings, versions=("v1", "v2")) -> CrossCameraMatcher:
    """What ingest, the embedder and the matcher store for these sightings, under every model version."""
    pool, store, matcher = open_pool(cfg, client), EmbeddingStore(client, PREFIX), _matcher(client)
    pairs = [p for s in sightings for p in s]
    ids = pool.add([c for c, _ in pairs])
    for version in versions:  # a promotion: the same crops embedded again by the new model
        embeddings = [Embedding(cid, c.camera_id, c.timestamp, c.track_id, v, version) for (c, v), cid in zip(pairs, ids)]
        store.add([(e, c.jpeg) for e, (c, _) in zip(embeddings, pairs)])
        matcher.update(embeddings)
        matcher.flush()
    matcher.store.save_thumbnails({matcher.tracklet_of(c.camera_id, c.track_id): c.jpeg for c, _ in pairs})
    return matcher


def every_value(client: redis.Redis) -> list[bytes]:
    """Every field and value of every key of the site (strings, hashes, streams, sets, lists)."""
    out: list[bytes] = []
    for key in client.scan_iter(match=f"{PREFIX}:*"):
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key))
        elif kind == b"hash":
            out += [x for kv in client.hgetall(key).items() for x in kv]
        elif kind == b"stream":
            out += [x for _, fields in client.xrange(key) for kv in fields.items() for x in kv]
        elif kind == b"set":
            out += list(client.smembers(key))
        elif kind == b"list":
            out += client.lrange(key, 0, -1)
    return out


def traces(client: redis.Redis, person: Person, keys: set[str]) -> int:
    """How many stored values hold one of the person's crops, embeddings or tracklet keys."""
    needles = [c.jpeg for c in person.crops] + [v.tobytes() for v in person.vectors] + [k.encode() for k in keys]
    return sum(any(n in value for n in needles) for value in every_value(client))


@pytest.fixture()
def two_people(tmp_path: Path, redis_client: redis.Redis) -> Iterator[dict]:
    """Person 1 and 2 seen by cameras A and B, matched across them, in model versions v1 and v2."""
    cfg, t0 = _site(tmp_path), time.time() - 600
    one, two = Person(0, (40, 40, 200), 1), Person(1, (200, 40, 40), 2)
    matcher = ingest_like(cfg, redis_client, [one.sighting("A", 1, t0), one.sighting("B", 5, t0 + 30),
                                              two.sighting("A", 2, t0 + 1), two.sighting("B", 6, t0 + 31)])
    keys = {p: {matcher.tracklet_of(c.camera_id, c.track_id) for c in p.crops} for p in (one, two)}
    gids = {p: {matcher.store.global_id_of(k) for k in keys[p]} for p in (one, two)}
    assert len(gids[one]) == len(gids[two]) == 1 and gids[one] != gids[two], gids  # matched across cameras
    yield {"cfg": cfg, "one": one, "two": two, "keys": keys, "gid": {p: next(iter(g)) for p, g in gids.items()}}


def identity_data(client: redis.Redis, gid: int) -> dict[str, int]:
    store = GalleryStore(client, PREFIX)
    records = sum(r.global_id == gid for v in store.versions() for r in store.load_tracklets(v))
    events = sum(e.get("global_id") == str(gid) for e in store.read_events(10_000))
    return {"gallery records": records, "ids": sum(g == gid for g in store.global_ids().values()), "events": events}


# --------------------------------------------------------------------------- forget
@security("`forget GLOBAL_ID` for one of two people seen by two cameras, two model versions",
          "no key or stream holds their crops, embeddings, tracklets, thumbnails or events; the other "
          "person is intact; a second call finds nothing")
def test_forget_deletes_one_person_everywhere(observe, two_people, redis_client) -> None:
    cfg, one, two, keys, gid = (two_people[k] for k in ("cfg", "one", "two", "keys", "gid"))
    before = {p: traces(redis_client, p, keys[p]) for p in (one, two)}
    other = identity_data(redis_client, gid[two])
    assert before[one] > 0 and identity_data(redis_client, gid[one])["gallery records"] == 4
    report = forget_identity(cfg, redis_client, gid[one])
    assert (report.tracklets, report.crops, report.embeddings, report.gallery_records, report.thumbnails) == \
        (2, 8, 16, 4, 2) and report.events >= 2
    assert traces(redis_client, one, keys[one]) == 0
    assert identity_data(redis_client, gid[one]) == {"gallery records": 0, "ids": 0, "events": 0}
    assert traces(redis_client, two, keys[two]) == before[two] and identity_data(redis_client, gid[two]) == other
    again = forget_identity(cfg, redis_client, gid[one])
    assert again.total == 0 and again.tracklets == 0
    observe(f"identity {gid[one]}: stored values holding their data {before[one]} -> 0 ({report.describe()}); "
            f"identity {gid[two]}: {before[two]} -> {traces(redis_client, two, keys[two])}; second call: "
            f"{again.total} deleted")


@security("`selfreid forget` from the command line, with and without --yes",
          "asks first (no answer = nothing deleted), prints the counts, then says nothing is left")
def test_forget_command(observe, two_people, redis_server, redis_client, tmp_path, monkeypatch) -> None:
    one, two, keys, gid = (two_people[k] for k in ("one", "two", "keys", "gid"))
    site = tmp_path / "site.yaml"
    site.write_text(f"data_dir: {tmp_path}\npool:\n  prefix: {PREFIX}\n")
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    runner = CliRunner()
    declined = runner.invoke(app, ["forget", str(gid[one]), "-c", str(site)], input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output and traces(redis_client, one, keys[one]) > 0
    done = runner.invoke(app, ["forget", str(gid[one]), "-c", str(site), "--yes"])
    assert done.exit_code == 0, done.output
    assert "8 crops" in one_line(done.output) and traces(redis_client, one, keys[one]) == 0
    again = runner.invoke(app, ["forget", str(gid[one]), "-c", str(site), "--yes"])
    assert again.exit_code == 0 and "nothing stored" in again.output
    assert identity_data(redis_client, gid[two])["gallery records"] == 4
    observe(f"declined: exit {declined.exit_code}, data kept; --yes: {one_line(done.output)}; "
            f"again: {one_line(again.output)}")


@security("`forget` after the model versions that held the person's gallery were dropped, the tracker id "
          "then reused for someone else", "their crops are still found and deleted; the next person on that "
          "tracker id is untouched")
def test_forget_after_the_gallery_version_was_dropped(observe, tmp_path, redis_client) -> None:
    cfg, t0 = _site(tmp_path), time.time() - 600
    one, two = Person(0, (40, 40, 200), 1), Person(1, (200, 40, 40), 2)
    matcher = ingest_like(cfg, redis_client, [one.sighting("A", 1, t0), two.sighting("A", 1, t0 + 100)],
                          versions=("v1",))
    gid = matcher.store.global_id_of(tracklet_key("A", 1, t0))
    matcher.store.drop_version("v1")  # two promotions later: v1's gallery records are gone, the ids stay
    report = forget_identity(cfg, redis_client, gid)
    assert (report.tracklets, report.crops, report.embeddings, report.gallery_records) == (1, 4, 4, 0)
    assert traces(redis_client, one, {tracklet_key("A", 1, t0)}) == 0
    assert len([c for c in open_pool(cfg, redis_client).snapshot(100) if c.track_id == 1]) == 4  # person two's
    observe(f"no gallery record left, found through the id map: {report.describe()}; the next 4 crops of "
            "tracker id 1 (another person) kept")


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@security("`forget` while the matcher service runs, then the person's look-alike appears",
          "the service reloads its gallery: the forgotten identity is never assigned again")
def test_running_matcher_forgets_too(observe, tmp_path, redis_server, redis_client) -> None:
    cfg, t0 = _site(tmp_path), time.time() - 600
    one, two = Person(0, (40, 40, 200), 1), Person(1, (200, 40, 40), 2)
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(stats=run_matcher(cfg, redis_server.url, stop)))
    thread.start()
    store, gallery = EmbeddingStore(redis_client, PREFIX), GalleryStore(redis_client, PREFIX)

    def embed(sightings) -> None:
        pairs = [p for s in sightings for p in s]
        store.add([(Embedding(f"{c.camera_id}/{i}", c.camera_id, c.timestamp, c.track_id, v, "v1"), c.jpeg)
                   for i, (c, v) in enumerate(pairs)])

    try:
        embed([one.sighting("A", 1, t0), one.sighting("B", 5, t0 + 30), two.sighting("A", 2, t0 + 1)])
        _wait(lambda: len(gallery.global_ids()) == 3 and not redis_client.xpending(store.key, "matcher")["pending"],
              20, "three decided tracklets, acknowledged")
        gid_one = gallery.global_ids()[tracklet_key("A", 1, t0)]
        forget_identity(cfg, redis_client, gid_one)
        embed([one.sighting("A", 9, t0 + 60)])  # the same appearance, seen again
        _wait(lambda: len(gallery.global_ids()) == 2, 20, "the new tracklet's decision")
    finally:
        stop.set()
        thread.join(timeout=20)
    assigned = set(gallery.global_ids().values())
    assert gid_one not in assigned and identity_data(redis_client, gid_one) == {"gallery records": 0, "ids": 0,
                                                                                 "events": 0}
    observe(f"forgotten id {gid_one}; the look-alike got id {max(assigned)}; ids in Redis now {sorted(assigned)}")


# --------------------------------------------------------------------------- retention
def _old_entries(client: redis.Redis, key: str, fields: dict, n: int) -> None:
    """Entries with ids from 1970: added long before any retention (stream ids are the server clock)."""
    for i in range(n):
        client.xadd(key, fields, id=f"{i + 1}-0")


@security("privacy retention (pool.params.max_age_hours) on a camera that stopped sending, and on the derived data",
          "crops, embeddings, events and gallery tracklets (thumbnails) older than the retention are deleted; "
          "newer ones kept")
def test_retention_deletes_old_crops_and_derived_data(observe, tmp_path, redis_client) -> None:
    cfg, now = _site(tmp_path, max_age_hours=1.0), time.time()
    crop_fields = {"cam": "quiet", "ts": "1.0", "frame": 1, "box": "0,0,1,1", "track": 3, "conf": "0.9", "jpeg": b"x"}
    _old_entries(redis_client, f"{PREFIX}:pool:quiet", crop_fields, 5)
    redis_client.sadd(f"{PREFIX}:cameras", "quiet")
    _old_entries(redis_client, f"{PREFIX}:embeddings", {"crop": "quiet/1-0", "jpeg": b"x"}, 4)
    _old_entries(redis_client, f"{PREFIX}:events", {"type": "new_identity"}, 3)
    _old_entries(redis_client, f"{PREFIX}:embedder:rejected", {"crop": "quiet/2-0", "reason": "corrupt jpeg"}, 2)
    old, new = Person(0, (40, 40, 200), 1), Person(1, (200, 40, 40), 2)
    matcher = ingest_like(cfg, redis_client, [old.sighting("A", 1, now - 7200), new.sighting("A", 2, now - 60)],
                          versions=("v1",))
    redis_client.hset(f"{PREFIX}:match:thumbs", "gone|7|1000", b"jpeg of a dropped version")
    pool = open_pool(cfg, redis_client)
    pool.add([Crop("A", now, 9, (0, 0, 1, 1), 2, 0.9, b"y")])  # a write trims only its own camera
    assert redis_client.xlen(f"{PREFIX}:pool:quiet") == 5
    store = GalleryStore(redis_client, PREFIX)
    old_key = matcher.tracklet_of("A", 1)
    assert store.thumbnails([old_key]) and old_key in matcher.gallery("v1").tracklets

    report = enforce_retention(cfg, redis_client, matcher)
    assert (report.crops, report.embeddings, report.events, report.tracklets_pruned, report.orphan_thumbnails,
            report.rejected_crops) == (5, 4, 3, 1, 1, 2)
    assert redis_client.xlen(f"{PREFIX}:pool:quiet") == 0
    assert old_key not in matcher.gallery("v1").tracklets and not store.thumbnails([old_key])
    kept = {matcher.tracklet_of("A", 2)}
    assert store.tracklet_keys() == kept and store.global_ids().keys() == kept
    assert traces(redis_client, new, {matcher.tracklet_of("A", 2)}) > 0
    assert pool.count_by_camera() == {"A": 9, "quiet": 0}
    observe(f"deleted {report.describe()}; the two-hour-old tracklet went, the minute-old one and the newer crops stay")


@security("privacy retention while the matcher service runs",
          "the service enforces it by itself (every matcher.prune_every_s) on a camera nobody writes to")
def test_matcher_service_enforces_retention(observe, tmp_path, redis_server, redis_client) -> None:
    cfg = _site(tmp_path, max_age_hours=1.0)
    cfg = cfg.model_copy(update={"matcher": cfg.matcher.model_copy(update={"prune_every_s": 0.2})})
    crop_fields = {"cam": "quiet", "ts": "1.0", "frame": 1, "box": "0,0,1,1", "track": 3, "conf": "0.9", "jpeg": b"x"}
    _old_entries(redis_client, f"{PREFIX}:pool:quiet", crop_fields, 5)
    redis_client.sadd(f"{PREFIX}:cameras", "quiet")
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(stats=run_matcher(cfg, redis_server.url, stop)))
    thread.start()
    started = time.monotonic()
    try:
        _wait(lambda: redis_client.xlen(f"{PREFIX}:pool:quiet") == 0, 20, "the old crops to expire")
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(timeout=20)
    assert result["stats"].expired >= 5
    observe(f"5 crops of 1970 deleted {took:.1f} s after the matcher started (prune_every_s 0.2); "
            f"expired counter {result['stats'].expired}")
