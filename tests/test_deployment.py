"""Deployment files: docker-compose.yml validated by docker-compose itself, both Dockerfiles linted
by hadolint, the resolved services checked for what an edge site relies on, and the health command.

The tools are installed by scripts/ci_tools.sh (scripts/test.sh calls it); a missing tool is a
failure here, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from selfreid.pipeline.cli import app
from selfreid.pipeline.cli.run import check_health
from selfreid.pipeline.runtime.status import publish_status, read_status

REPO = Path(__file__).resolve().parents[1]
APP_SERVICES = ("ingest", "trainer", "embedder", "matcher", "api")
INSTALL_HINT = "run `bash scripts/ci_tools.sh` (scripts/test.sh does)"


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}")
    return path


def _compose(*args: str, env_file: Path = REPO / ".env.example") -> subprocess.CompletedProcess:
    cmd = [_tool("docker-compose"), "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml"), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def resolved() -> dict:
    """docker-compose.yml as docker-compose resolves it (anchors, merges, .env.example values)."""
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates_with_docker_compose() -> None:
    for profile in ("gpu", "cpu"):
        result = _compose("--profile", profile, "config", "-q")
        assert result.returncode == 0, (profile, result.stderr)


@pytest.mark.parametrize("secret", ["REDIS_PASSWORD", "SELFREID_API_TOKEN"])
def test_compose_refuses_to_start_without_a_secret(tmp_path: Path, secret: str) -> None:
    env = tmp_path / "partial.env"
    others = {"REDIS_PASSWORD", "SELFREID_API_TOKEN"} - {secret}
    env.write_text("CUDA_VERSION=12.6.3\n" + "".join(f"{name}=some-long-secret-value\n" for name in others))
    result = _compose("config", "-q", env_file=env)
    assert result.returncode != 0 and secret in result.stderr


def test_redis_is_private_persistent_and_never_evicts(resolved: dict) -> None:
    redis = resolved["services"]["redis"]
    assert "ports" not in redis, "redis must not publish a port"
    command = " ".join(redis["command"])
    for flag in ("--requirepass", "--appendonly yes", "--maxmemory-policy noeviction", "--maxmemory"):
        assert flag in command, flag
    assert redis["mem_limit"]
    assert any(v.startswith("redis-data:/data") for v in redis["volumes"])
    test = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in test and "REDIS_PASSWORD" in test and "ping" in test
    assert redis["restart"] == "unless-stopped"


def test_trainer_reserves_one_nvidia_gpu_and_cpu_variants_do_not(resolved: dict) -> None:
    services = resolved["services"]
    for name in ("trainer", "embedder"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        assert services[name]["profiles"] == ["gpu"]
        assert "deploy" not in services[f"{name}-cpu"] and services[f"{name}-cpu"]["profiles"] == ["cpu"]


def test_cpu_settings_switch_every_app_service_to_the_cpu_image(tmp_path: Path) -> None:
    env = tmp_path / "cpu.env"
    env.write_text("REDIS_PASSWORD=x\nSELFREID_API_TOKEN=y\nCOMPOSE_PROFILES=cpu\nSELFREID_DOCKERFILE=Dockerfile.cpu\nSELFREID_IMAGE=selfreid:cpu\n")
    result = _compose("config", env_file=env)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in ("ingest", "trainer-cpu", "embedder-cpu", "matcher", "api", "models-init"):
        assert services[name]["image"] == "selfreid:cpu" and services[name]["build"]["dockerfile"] == "Dockerfile.cpu"
        assert "deploy" not in services[name], name


def test_every_stage_has_health_restart_volumes_and_redis_url(resolved: dict) -> None:
    services = resolved["services"]
    for name in APP_SERVICES:
        svc = services[name]
        assert svc["restart"] == "unless-stopped", name
        assert svc["healthcheck"]["test"][:3] == ["CMD", "selfreid", "health"], name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        mounts = {v.split(":")[1] for v in svc["volumes"]}
        assert {"/data/models", "/data/logs", "/config/site.yaml"} <= mounts, name
        assert svc["environment"]["REDIS_URL"].startswith("redis://:change-me"), name
        assert svc["image"] == "selfreid:gpu" and svc["build"]["dockerfile"] == "Dockerfile", name
    assert services["ingest"]["environment"]["SELFREID_INGEST_SHARD"] == "auto"
    assert services["api"]["environment"]["SELFREID_API_TOKEN"].startswith("change-me")
    assert not any("SELFREID_API_TOKEN" in services[n]["environment"] for n in APP_SERVICES if n != "api")
    assert [p.split(":")[0] for p in services["api"]["ports"]] == ["127.0.0.1"]
    assert not any("ports" in services[n] for n in APP_SERVICES if n != "api")
    assert {"redis-data", "models", "logs"} <= set(resolved["volumes"])
    assert services["models-init"]["restart"] == "no"
    assert services["trainer"]["depends_on"]["models-init"]["condition"] == "service_completed_successfully"


def test_compose_commands_are_real_selfreid_commands(resolved: dict) -> None:
    """Every container command and healthcheck is a command line the CLI accepts (name and options)."""
    runner = CliRunner()
    services = {name: svc for name, svc in resolved["services"].items() if name != "redis"}
    commands = {tuple(svc["command"]) for svc in services.values()}
    assert "--if-empty" in services["models-init"]["command"]  # a second `up` must not fail on the registry
    commands |= {tuple(svc["healthcheck"]["test"][2:]) for svc in services.values() if "healthcheck" in svc}
    for command in sorted(commands):
        result = runner.invoke(app, [*command, "--help"])  # options before --help are still parsed
        assert result.exit_code == 0, (command, result.output)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_lints_clean_and_follows_the_rules(dockerfile: str) -> None:
    result = subprocess.run([_tool("hadolint"), dockerfile], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / dockerfile).read_text()
    assert text.count("\nFROM ") >= 2, "multi-stage build"
    assert "--mount=type=cache,target=/root/.cache/pip" in text
    assert "\nARG BASE_IMAGE=" in text and "\nUSER ${APP_UID}" in text and "useradd --uid" in text
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    extra = ".[gpu]" if dockerfile == "Dockerfile" else ".[cpu]"
    assert extra in text.replace("${EXTRAS}", "gpu")
    if dockerfile == "Dockerfile":
        assert "ARG CUDA_VERSION=" in text and "TORCH_FROM_BASE" in text


def test_dockerignore_keeps_data_venv_and_weights_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".selfreid", ".env", "**/*.pt", "**/*.onnx", "tests"):
        assert entry in ignored, entry


def test_env_example_defines_what_compose_needs() -> None:
    keys = {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text().splitlines() if "=" in line
            and not line.startswith("#")}
    assert {"REDIS_PASSWORD", "CUDA_VERSION", "SITE_CONFIG", "COMPOSE_PROFILES"} <= keys


def test_check_health_rules() -> None:
    now = 1000.0
    status = {"ingest:0": {"updated": now - 5, "state": "running"}, "embedder:h1": {"updated": now - 500}}
    assert check_health(status, "ingest", 60, now=now)[0]
    healthy, reason = check_health(status, "embedder", 60, now=now)
    assert not healthy and "silent for 500 s" in reason
    assert not check_health(status, "matcher", 60, now=now)[0]
    assert not check_health(status, "ingest", 60, instance="7", now=now)[0]
    broken = {"api:0": {"updated": now, "state": "error", "error": "port in use"}}
    assert check_health(broken, "api", 60, now=now) == (False, "api:0 state error: port in use")


def test_health_command_reads_redis(redis_server, redis_client, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.delenv("SELFREID_CONFIG", raising=False)
    assert runner.invoke(app, ["health", "matcher"]).exit_code == 1
    publish_status(redis_client, "selfreid", "matcher", {"state": "running"})
    assert "matcher:0" in read_status(redis_client, "selfreid")
    result = runner.invoke(app, ["health", "matcher", "--max-age", "30"])
    assert result.exit_code == 0, result.output
    time.sleep(1.1)
    assert runner.invoke(app, ["health", "matcher", "--max-age", "1"]).exit_code == 1
    monkeypatch.setenv("REDIS_URL", "redis://:pw@127.0.0.1:1/0")
    down = runner.invoke(app, ["health", "matcher"])
    assert down.exit_code == 1 and "unreachable" in down.output and "Traceback" not in down.output


@pytest.mark.parametrize("name", ["local.yaml", "site_edge_gpu.yaml"])
def test_shipped_configs_validate_with_every_plugin(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "pw")  # site_edge_gpu.yaml names a network Redis without its password
    result = CliRunner().invoke(app, ["config", "check", str(REPO / "configs" / name)])
    assert result.exit_code == 0, result.output


def test_site_config_serves_on_all_interfaces_and_local_config_uses_offline_backbone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from selfreid.pipeline.config import load_config

    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_PASSWORD", "pw")
    site = load_config(REPO / "configs" / "site_edge_gpu.yaml")
    assert site.api.host == "0.0.0.0" and site.train.model.backbone == "resnet50"
    assert all(cam.id and cam.uri and cam.stride >= 1 for cam in site.ingest.cameras)
    local = load_config(REPO / "configs" / "local.yaml")
    assert local.redis.url is None and local.train.model.backbone == "mobilenet_v2"
    assert [cam.uri.startswith("../shared/data/") for cam in local.ingest.cameras] == [True, True]


def test_health_http_probe_for_the_api() -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        runner = CliRunner()
        assert runner.invoke(app, ["health", "api", "--http", f"{base}/health"]).exit_code == 0
        bad = runner.invoke(app, ["health", "api", "--http", f"{base}/down"])
        assert bad.exit_code == 1 and "503" in bad.output
    finally:
        server.shutdown()
        server.server_close()
    gone = CliRunner().invoke(app, ["health", "api", "--http", f"{base}/health"])
    assert gone.exit_code == 1 and "unreachable" in gone.output
