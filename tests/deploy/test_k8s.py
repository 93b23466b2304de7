"""The Kubernetes manifests (deploy/k8s): both overlays render with `kubectl kustomize`, every object
validates against a pinned Kubernetes version's schema (strict: unknown fields are errors), the KEDA
objects have their required fields, and the deployment rules hold. Each rule is a function over the
rendered objects that returns what breaks it, tested on a broken object too, so that it can fail.

What is not done here: applying them to a cluster (there is none on this machine)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from selfreid.pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("edge-gpu", "cpu")
KUBERNETES_VERSION = "1.31.0"  # the schema every object is validated against (kubernetes-validate)
STAGES = {"ingest": "StatefulSet", "embedder": "Deployment", "trainer": "Deployment", "matcher": "Deployment",
          "api": "Deployment"}
GPU = "nvidia.com/gpu"
Obj = dict[str, Any]

NO_KUBECTL = "kubectl (which ships kustomize) is not installed: the manifests cannot be rendered here"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason=NO_KUBECTL)


def render(path: Path) -> list[Obj]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[Obj]]:
    if shutil.which("kubectl") is None:
        pytest.skip(NO_KUBECTL)
    return request.param, render(K8S / "overlays" / request.param)


def named(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_spec(obj: Obj) -> Obj | None:
    return (obj.get("spec", {}).get("template") or {}).get("spec")


def containers(objs: list[Obj]) -> list[tuple[str, Obj]]:
    return [(f"{o['kind']}/{o['metadata']['name']}", c) for o in objs if (spec := pod_spec(o))
            for c in spec.get("containers", [])]


# ---------------------------------------------------------------------------------------------- rules
def redis_exposed(objs: list[Obj]) -> list[str]:
    """Services of type LoadBalancer/NodePort in front of Redis."""
    return [o["metadata"]["name"] for o in objs if o["kind"] == "Service"
            and o["spec"].get("type", "ClusterIP") in ("LoadBalancer", "NodePort")
            and ("redis" in o["metadata"]["name"] or any(p.get("port") == 6379 for p in o["spec"].get("ports", [])))]


SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|KEY", re.I)
URL_WITH_PASSWORD = re.compile(r"\w+://[^/\s:@]*:[^/\s@]+@")


def inlined_secrets(objs: list[Obj]) -> list[str]:
    """Secret objects with values, secret-like env vars with a literal value, passwords in ConfigMaps."""
    bad = [f"Secret/{o['metadata']['name']}" for o in objs if o["kind"] == "Secret"]
    for where, c in containers(objs):
        bad += [f"{where}: env {e['name']}" for e in c.get("env", [])
                if SECRET_NAME.search(e["name"]) and "value" in e]
        bad += [f"{where}: env {e['name']}" for e in c.get("env", []) if URL_WITH_PASSWORD.search(e.get("value", ""))]
    for o in objs:
        if o["kind"] == "ConfigMap":
            bad += [f"ConfigMap/{o['metadata']['name']}: {k}" for k, v in o.get("data", {}).items()
                    if URL_WITH_PASSWORD.search(v) or re.search(r"^\s*(password|token)\s*:", v, re.M | re.I)]
    return bad


def gpu_requests(objs: list[Obj]) -> dict[str, int]:
    return {where: int(c.get("resources", {}).get("limits", {}).get(GPU, 0)) for where, c in containers(objs)}


def probe_problems(objs: list[Obj]) -> list[str]:
    """Every stage container has a liveness probe, and every probe runs `selfreid health STAGE`."""
    bad = []
    for o in objs:
        name = o["metadata"]["name"]
        if o["kind"] not in ("Deployment", "StatefulSet") or name not in STAGES:
            continue
        c = pod_spec(o)["containers"][0]
        probes = {k: c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c}
        if "livenessProbe" not in probes:
            bad.append(f"{name}: no livenessProbe")
        stage = "train" if name == "trainer" else name
        for kind, probe in probes.items():
            command = " ".join(probe.get("exec", {}).get("command", []))
            if not re.search(rf"(^|exec )selfreid health {stage}\b", command):
                bad.append(f"{name}: {kind} does not run `selfreid health {stage}`: {command!r}")
    return bad


def site_config_problems(objs: list[Obj]) -> list[str]:
    """Every stage reads the site YAML from the ConfigMap mounted at /config."""
    bad = []
    for o in objs:
        spec = pod_spec(o)
        if spec is None or o["metadata"]["name"] not in (*STAGES, "models-init"):
            continue
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        c = spec["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        source = volumes.get(mounts.get("/config", ""), {})
        if not source.get("configMap", {}).get("name", "").startswith("selfreid-site"):
            bad.append(f"{o['metadata']['name']}: /config is not the selfreid-site ConfigMap")
        if "/config/site.yaml" not in c.get("args", []):
            bad.append(f"{o['metadata']['name']}: not started with --config /config/site.yaml")
    return bad


REDIS_STREAMS_REQUIRED = ("stream",)
REDIS_STREAMS_ADDRESS = (("address",), ("host", "port"))
REDIS_STREAMS_MODE = ("pendingEntriesCount", "streamLength", "lagCount")


def keda_problems(objs: list[Obj]) -> list[str]:
    """Required fields of KEDA's ScaledObject and TriggerAuthentication (keda.sh/v1alpha1), checked by hand:
    no CRD schema offline. A redis-streams trigger needs a stream, an address (or host and port), one
    scaling mode and, here, a consumer group and an existing TriggerAuthentication."""
    bad = []
    auths = {o["metadata"]["name"]: o for o in objs if o["kind"] == "TriggerAuthentication"}
    for name, auth in auths.items():
        refs = auth.get("spec", {}).get("secretTargetRef", [])
        if not refs or any(not all(r.get(k) for k in ("parameter", "name", "key")) for r in refs):
            bad.append(f"TriggerAuthentication/{name}: secretTargetRef needs parameter, name and key")
    targets = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for o in (o for o in objs if o["kind"] == "ScaledObject"):
        where, spec = f"ScaledObject/{o['metadata']['name']}", o.get("spec", {})
        if o.get("apiVersion") != "keda.sh/v1alpha1":
            bad.append(f"{where}: apiVersion must be keda.sh/v1alpha1")
        ref = spec.get("scaleTargetRef", {})
        if (ref.get("kind", "Deployment"), ref.get("name")) not in targets:
            bad.append(f"{where}: scaleTargetRef {ref} is not an object of this deployment")
        if not spec.get("triggers"):
            bad.append(f"{where}: no triggers")
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            bad.append(f"{where}: minReplicaCount > maxReplicaCount")
        for i, t in enumerate(spec.get("triggers", [])):
            meta = t.get("metadata") or {}
            if t.get("type") != "redis-streams":
                bad.append(f"{where}: trigger {i} is not redis-streams")
                continue
            if not all(meta.get(k) for k in REDIS_STREAMS_REQUIRED) or not meta.get("consumerGroup"):
                bad.append(f"{where}: trigger {i} needs stream and consumerGroup")
            if not any(all(meta.get(k) for k in keys) for keys in REDIS_STREAMS_ADDRESS):
                bad.append(f"{where}: trigger {i} needs address (or host and port)")
            if sum(k in meta for k in REDIS_STREAMS_MODE) != 1 or not all(str(meta.get(k, "1")).isdigit()
                                                                          for k in REDIS_STREAMS_MODE):
                bad.append(f"{where}: trigger {i} needs exactly one of {', '.join(REDIS_STREAMS_MODE)} (a number)")
            if t.get("authenticationRef", {}).get("name") not in auths:
                bad.append(f"{where}: trigger {i} authenticationRef names no TriggerAuthentication")
    return bad


def site_yaml(objs: list[Obj], tmp_path: Path) -> Path:
    site = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("selfreid-site"))
    path = tmp_path / "site.yaml"
    path.write_text(site["data"]["site.yaml"])
    return path


def untriggered_cameras(objs: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Camera streams of the site YAML without a trigger on the embedder's ScaledObject (and back)."""
    monkeypatch.setenv("REDIS_PASSWORD", "x")  # the pods get it from the Secret
    cfg = load_config(site_yaml(objs, tmp_path))
    streams = {f"{cfg.pool.prefix}:pool:{cam.id}" for cam in cfg.ingest.cameras}
    scaled = named(objs, "ScaledObject", "embedder")
    triggered = {t["metadata"]["stream"] for t in scaled["spec"]["triggers"]}
    return sorted(streams ^ triggered)


# ---------------------------------------------------------------------------------------------- tests
def test_every_object_validates_against_the_pinned_kubernetes_schema(overlay):
    import kubernetes_validate

    name, objs = overlay
    crds = [o for o in objs if o["apiVersion"].startswith("keda.sh/")]
    for obj in objs:
        if obj in crds:
            continue  # KEDA's custom resources: checked field by field below
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert {o["kind"] for o in crds} == {"ScaledObject", "TriggerAuthentication"}
    assert keda_problems(objs) == []


def test_the_stages_and_redis_are_all_there(overlay):
    name, objs = overlay
    for stage, kind in STAGES.items():
        named(objs, kind, stage)
    redis = named(objs, "StatefulSet", "redis")
    args = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--maxmemory-policy noeviction" in args and "--appendonly yes" in args and '"$REDIS_PASSWORD"' in args
    assert redis["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    policy = named(objs, "NetworkPolicy", "redis-only-from-selfreid")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "redis"}}
    for stage, kind in STAGES.items():  # ... and every stage is admitted by it
        labels = named(objs, kind, stage)["spec"]["template"]["metadata"]["labels"]
        assert labels.get("app.kubernetes.io/part-of") == "selfreid", stage
    matcher = named(objs, "Deployment", "matcher")
    assert matcher["spec"]["replicas"] == 1 and matcher["spec"]["strategy"] == {"type": "Recreate"}
    named(objs, "Service", "api")
    assert (name == "edge-gpu") == any(o["kind"] == "Ingress" for o in objs)  # the optional component


def test_the_deployment_rules_hold(overlay, tmp_path, monkeypatch):
    name, objs = overlay
    assert redis_exposed(objs) == []
    assert inlined_secrets(objs) == []
    assert probe_problems(objs) == []
    assert site_config_problems(objs) == []
    assert untriggered_cameras(objs, tmp_path, monkeypatch) == []
    gpus = gpu_requests(objs)
    with_gpu = {"StatefulSet/ingest", "Deployment/embedder", "Deployment/trainer"}
    assert {w for w, n in gpus.items() if n} == (with_gpu if name == "edge-gpu" else set())
    if name == "edge-gpu":
        assert all(gpus[w] == 1 for w in with_gpu)


@needs_kubectl
def test_the_multi_node_ddp_example_renders_and_validates():
    import kubernetes_validate

    objs = render(K8S / "examples" / "trainer-ddp")
    for obj in objs:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    job = named(objs, "Job", "trainer-ddp")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--rdzv-backend=c10d" in args and f"--nnodes={job['spec']['completions']}" in args
    assert job["spec"]["completionMode"] == "Indexed" and gpu_requests(objs) == {"Job/trainer-ddp": 1}


@needs_kubectl
def test_an_external_redis_replaces_the_in_cluster_one(tmp_path):
    import os

    import kubernetes_validate

    relative = Path(os.path.relpath(K8S, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(relative / "overlays" / "cpu")], "components": [str(relative / "components" / "external-redis")],
    }))
    objs = render(tmp_path)
    assert not [o for o in objs if o["metadata"]["name"].startswith("redis")]
    for where, c in containers(objs):
        url = next(e for e in c["env"] if e["name"] == "REDIS_URL")
        assert url["valueFrom"]["secretKeyRef"] == {"name": "selfreid-secrets", "key": "redis-url"}, where
    for obj in objs:
        if not obj["apiVersion"].startswith("keda.sh/"):
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert inlined_secrets(objs) == [] and probe_problems(objs) == []


# ----------------------------------------------------------------- each rule fails on a broken object
def _deployment(name: str, container: Obj, volumes: list[Obj] | None = None) -> Obj:
    return {"kind": "Deployment", "metadata": {"name": name},
            "spec": {"template": {"metadata": {"labels": {}}, "spec": {"containers": [container], "volumes": volumes or []}}}}


BROKEN: list[tuple[str, Callable[[list[Obj]], list[str]], Obj]] = [
    ("redis on a LoadBalancer", redis_exposed,
     {"kind": "Service", "metadata": {"name": "redis"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 6379}]}}),
    ("redis on a NodePort", redis_exposed,
     {"kind": "Service", "metadata": {"name": "cache"}, "spec": {"type": "NodePort", "ports": [{"port": 6379}]}}),
    ("a Secret in the manifests", inlined_secrets,
     {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"redis-password": "x"}}),
    ("a literal password", inlined_secrets,
     _deployment("api", {"name": "api", "env": [{"name": "REDIS_PASSWORD", "value": "hunter2"}]})),
    ("a password in a URL", inlined_secrets,
     _deployment("api", {"name": "api", "env": [{"name": "REDIS_URL", "value": "redis://:pw@redis:6379/0"}]})),
    ("a password in the site ConfigMap", inlined_secrets,
     {"kind": "ConfigMap", "metadata": {"name": "selfreid-site"},
      "data": {"site.yaml": "ingest:\n  cameras:\n    - uri: rtsp://admin:admin@10.0.0.5/live\n"}}),
    ("a probe that is not selfreid health", probe_problems,
     _deployment("matcher", {"name": "m", "livenessProbe": {"exec": {"command": ["true"]}}})),
    ("no liveness probe", probe_problems, _deployment("matcher", {"name": "m"})),
    ("site YAML not from the ConfigMap", site_config_problems,
     _deployment("matcher", {"name": "m", "args": ["match", "--config", "/config/site.yaml"],
                             "volumeMounts": [{"name": "site", "mountPath": "/config"}]},
                 [{"name": "site", "emptyDir": {}}])),
    ("a ScaledObject without triggers", keda_problems,
     {"kind": "ScaledObject", "apiVersion": "keda.sh/v1alpha1", "metadata": {"name": "e"},
      "spec": {"scaleTargetRef": {"name": "missing"}, "triggers": []}}),
]


@pytest.mark.parametrize(("case", "rule", "obj"), BROKEN, ids=[b[0] for b in BROKEN])
def test_each_rule_reports_a_broken_object(case, rule, obj):
    assert rule([obj]), f"{rule.__name__} accepted {case}"


def test_a_redis_streams_trigger_without_stream_or_mode_is_reported():
    auth = {"kind": "TriggerAuthentication", "metadata": {"name": "a"},
            "spec": {"secretTargetRef": [{"parameter": "password", "name": "s", "key": "k"}]}}
    target = _deployment("embedder", {"name": "e"})
    scaled = {"kind": "ScaledObject", "apiVersion": "keda.sh/v1alpha1", "metadata": {"name": "e"},
              "spec": {"scaleTargetRef": {"name": "embedder"}, "triggers": [
                  {"type": "redis-streams", "metadata": {"address": "redis:6379", "consumerGroup": "embedder"},
                   "authenticationRef": {"name": "a"}}]}}
    assert len(keda_problems([auth, target, scaled])) == 2  # no stream, no scaling mode
    scaled["spec"]["triggers"][0]["metadata"] |= {"stream": "p:pool:c", "lagCount": "10"}
    assert keda_problems([auth, target, scaled]) == []
