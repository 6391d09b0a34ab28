"""kubernetes=yes: the kustomize base and overlay render offline, validate against Kubernetes' and KEDA's
schemas, pass checkov, run the pods the way the image runs, and scale on the queue the service consumes.

Everything runs offline. kubectl must be installed (it renders with its built-in kustomize); checkov,
kubernetes-validate and KEDA's models live in their own virtual environment, .venv-k8s, made here from
requirements-k8s.txt when missing or stale (checkov's dependencies would clash with requirements-test.txt).
A missing tool fails the test with how to get it; nothing is skipped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import BROKERS, TEMPLATE, bake, project_env, run

# The Kubernetes version kubernetes-validate checks against: pinned, recent, and among those the pinned
# kubernetes-validate (requirements-k8s.txt) ships schemas for.
KUBERNETES_VERSION = "1.35.0"
TOOLS_VENV = Path(os.environ.get("TEMPLATE_K8S_VENV", TEMPLATE / ".venv-k8s"))
TOOLS_REQUIREMENTS = TEMPLATE / "requirements-k8s.txt"
TOOLS_HINT = (
    f"make it with `python3 -m venv {TOOLS_VENV} && {TOOLS_VENV}/bin/pip install -r requirements-k8s.txt` "
    "(PyPI must be reachable once), or point TEMPLATE_K8S_VENV at such an environment"
)
KUBECTL_HINT = (
    "install kubectl 1.27 or newer (it renders with its built-in kustomize): "
    "https://kubernetes.io/docs/tasks/tools/ , or `apt-get install kubectl` from the Kubernetes apt repository"
)
LAYERS = ["base", "overlays/production"]

# checkov checks skipped on the rendered manifests, each for a reason; every other check must pass.
CHECKOV_SKIPS = {
    # "Image should use digest": the image is the project's own, built and pushed by its team; the base
    # cannot know its digest. Pin one in your overlay (`images: - digest: sha256:...`) once you publish.
    "CKV_K8S_43": "image digests belong in the user's overlay",
    # "Prefer using secrets as files over secrets as environment variables": the service reads every
    # setting, BROKER_URL included, from the environment (pydantic-settings), as the twelve-factor
    # contract (CONTRACT.md section 3) says; the value comes from a Secret by reference, never inline.
    "CKV_K8S_35": "the service's settings are environment variables by contract",
}

# The trigger metadata keys each KEDA scaler reads, from KEDA's scaler documentation (2.16, the version of
# cloudcoil-models-keda in requirements-k8s.txt):
#   https://keda.sh/docs/2.16/scalers/rabbitmq-queue/
#   https://keda.sh/docs/2.16/scalers/redis-streams/
#   https://keda.sh/docs/2.16/scalers/apache-kafka/
# (queueLength, deprecated there, is left out.) A key outside its scaler's list is ignored by KEDA without a
# word: a typo would silently change scaling.
TRIGGER_KEYS = {
    "rabbitmq": {
        "host", "hostFromEnv", "usernameFromEnv", "passwordFromEnv", "protocol", "mode", "value",
        "activationValue", "queueName", "vhostName", "useRegex", "excludeUnacknowledged", "pageSize",
        "operation", "timeout", "unsafeSsl",
    },
    "redis-streams": {
        "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "usernameFromEnv",
        "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount", "streamLength", "lagCount",
        "activationLagCount", "databaseIndex", "enableTLS", "unsafeSsl",
    },
    "kafka": {
        "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
        "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
        "limitToPartitionsWithLag", "version", "partitionLimitation", "sasl", "saslTokenProvider", "tls",
        "unsafeSsl", "awsRegion",
    },
}  # fmt: skip
# The scaler and what it must say for each broker (issue 16; the README says why).
SCALERS = {
    "rabbitmq": ("rabbitmq", {"protocol": "http", "mode": "QueueLength"}),
    "redis": ("redis-streams", {}),
    "kafka": ("kafka", {}),
}
REQUIRED_KEYS = {"rabbitmq": {"value", "queueName"}, "redis": {"consumerGroup", "lagCount", "stream"}}
REQUIRED_KEYS["kafka"] = {"lagThreshold", "consumerGroup", "topic", "bootstrapServers"}

# Validates KEDA objects against cloudcoil's models of KEDA's CRDs, run by .venv-k8s's interpreter. The
# models ignore unknown fields, so a field they dropped on the way through is reported as unknown.
KEDA_VALIDATOR = r"""
import json, sys
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
MODELS = {"ScaledObject": ScaledObject, "TriggerAuthentication": TriggerAuthentication}

def unknown(given, kept, path=""):
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                yield f"{path}/{key}"
            else:
                yield from unknown(value, kept[key], f"{path}/{key}")
    elif isinstance(given, list):
        for index, value in enumerate(given):
            yield from unknown(value, kept[index] if isinstance(kept, list) and index < len(kept) else None,
                               f"{path}/{index}")

problems = []
for document in json.load(sys.stdin):
    try:
        model = MODELS[document["kind"]].model_validate(document)
    except Exception as error:
        problems.append(f"{document['kind']} {document['metadata']['name']}: {error}")
        continue
    kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    name = f"{document['kind']} {document['metadata']['name']}"
    problems += [f"{name}: unknown field {path}" for path in unknown(document, kept)]
print(json.dumps(problems))
"""


def tools_venv_ready() -> bool:
    stamp = TOOLS_VENV / ".requirements-k8s.sha256"
    want = hashlib.sha256(TOOLS_REQUIREMENTS.read_bytes()).hexdigest()
    return (TOOLS_VENV / "bin" / "checkov").exists() and stamp.exists() and stamp.read_text().strip() == want


@pytest.fixture(scope="session")
def tools() -> Path:
    """.venv-k8s/bin, made from requirements-k8s.txt if missing or stale; one install at a time per checkout."""
    checkout = hashlib.sha256(str(TOOLS_VENV).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"template-k8s-venv-{checkout}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tools_venv_ready():
            for command in (
                [sys.executable, "-m", "venv", str(TOOLS_VENV)],
                [str(TOOLS_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r", str(TOOLS_REQUIREMENTS)],
            ):
                result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
                if result.returncode != 0:
                    pytest.fail(
                        f"cannot make the Kubernetes tools' environment: `{' '.join(command)}` exited "
                        f"{result.returncode}\n{result.stderr[-3000:]}\n{TOOLS_HINT}",
                        pytrace=False,
                    )
            want = hashlib.sha256(TOOLS_REQUIREMENTS.read_bytes()).hexdigest()
            (TOOLS_VENV / ".requirements-k8s.sha256").write_text(want)
    return TOOLS_VENV / "bin"


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(f"kubectl not found on PATH; {KUBECTL_HINT}", pytrace=False)
    return path


class Deployment:
    """One broker's project baked with kubernetes=yes, and its manifests rendered by kustomize."""

    def __init__(self, project: Path, rendered: dict[str, str]) -> None:
        self.project = project
        self.rendered = rendered  # layer -> YAML text
        self.objects = {layer: [doc for doc in yaml.safe_load_all(text) if doc] for layer, text in rendered.items()}

    def find(self, kind: str, suffix: str = "", layer: str = "base") -> dict[str, Any]:
        [found] = [o for o in self.objects[layer] if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
        return found

    def kinds(self, layer: str = "base") -> list[str]:
        return sorted(o["kind"] for o in self.objects[layer])


@pytest.fixture(scope="module")
def deployments() -> dict[str, Deployment]:
    return {}


@pytest.fixture(params=BROKERS)
def deployment(
    request: pytest.FixtureRequest, deployments: dict[str, Deployment], tmp_path_factory, kubectl: str
) -> tuple[str, Deployment]:
    broker: str = request.param
    if broker not in deployments:
        project = bake(tmp_path_factory.mktemp(f"k8s-{broker}"), broker=broker, kubernetes="yes", ci="none")
        rendered = {
            layer: run([kubectl, "kustomize", f"deploy/kubernetes/{layer}"], project, timeout=120) for layer in LAYERS
        }
        deployments[broker] = Deployment(project, rendered)
    return broker, deployments[broker]


def write_rendered(deployment: Deployment, directory: Path) -> list[Path]:
    paths = []
    for layer, text in deployment.rendered.items():
        path = directory / f"{layer.replace('/', '-')}.yaml"
        path.write_text(text)
        paths.append(path)
    return paths


def test_the_base_and_the_overlay_render(deployment: tuple[str, Deployment]) -> None:
    broker, rendered = deployment
    expected = [
        "ConfigMap",
        "Deployment",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Namespace",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodDisruptionBudget",
        "ScaledObject",
        "Service",
    ]
    if broker != "kafka":
        expected.append("TriggerAuthentication")
    assert rendered.kinds() == sorted(expected)
    assert rendered.kinds("overlays/production") == sorted(expected)
    images = {
        c["image"]
        for o in rendered.objects["overlays/production"]
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example.com/task-service:0.1.0"}


def test_kubernetes_validate_strict_passes(deployment: tuple[str, Deployment], tools: Path, tmp_path: Path) -> None:
    _, rendered = deployment
    validate = [str(tools / "kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION]
    output = run([*validate, *map(str, write_rendered(rendered, tmp_path))], tmp_path)
    # The KEDA kinds are custom resources, checked against KEDA's own models below.
    unexpected = [line for line in output.splitlines() if line.strip() and "keda.sh/v1alpha1" not in line]
    assert unexpected == []
    # --strict does reject what Kubernetes does not know.
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {}\nunknownField: 1\n")
    refused = subprocess.run([*validate, str(bad)], capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode != 0, refused.stdout + refused.stderr


def keda_problems(tools: Path, documents: list[dict[str, Any]]) -> list[str]:
    result = subprocess.run(
        [str(tools / "python"), "-c", KEDA_VALIDATOR],
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    problems: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return problems


def test_keda_objects_validate_against_kedas_models(deployment: tuple[str, Deployment], tools: Path) -> None:
    _, rendered = deployment
    keda = [o for layer in LAYERS for o in rendered.objects[layer] if o["apiVersion"] == "keda.sh/v1alpha1"]
    assert keda
    assert keda_problems(tools, keda) == []
    # The check can fail: a misspelt field is reported.
    scaled = json.loads(json.dumps(rendered.find("ScaledObject")))
    scaled["spec"]["maxReplicas"] = 3
    name = scaled["metadata"]["name"]
    assert keda_problems(tools, [scaled]) == [f"ScaledObject {name}: unknown field /spec/maxReplicas"]


def test_each_trigger_uses_only_keys_its_scaler_reads(deployment: tuple[str, Deployment]) -> None:
    broker, rendered = deployment
    scaled = rendered.find("ScaledObject")
    [trigger] = scaled["spec"]["triggers"]
    scaler, pinned = SCALERS[broker]
    assert trigger["type"] == scaler
    metadata = trigger["metadata"]
    assert set(metadata) - TRIGGER_KEYS[scaler] == set()
    assert REQUIRED_KEYS[broker] <= set(metadata)
    assert {key: metadata.get(key) for key in pinned} == pinned
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA's metadata values are strings"
    if "authenticationRef" in trigger:
        auth = rendered.find("TriggerAuthentication")
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["parameter"] in TRIGGER_KEYS[scaler] | {"password", "username"}
            assert ref["name"] == secret_name(rendered)


def secret_name(rendered: Deployment) -> str:
    worker = rendered.find("Deployment", "-worker")
    [broker_url] = [e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "BROKER_URL"]
    name: str = broker_url["valueFrom"]["secretKeyRef"]["name"]
    return name


SETTINGS_PROBE = """
import json, os, sys
from task_service.settings import Settings
try:
    from task_service.brokers.kafka.records import group_id  # Kafka's group: CONSUMER_GROUP or <QUEUE_NAME>.workers
except ImportError:
    group_id = None
defaults = Settings(_env_file=None)
configured = Settings(_env_file=None, **{k.lower(): v for k, v in json.loads(sys.argv[1]).items()})
fields = set(Settings.model_fields)
def view(s):
    out = s.model_dump()
    out["group_id"] = group_id(s) if group_id else out.get("consumer_group")
    return out
print(json.dumps({"defaults": view(defaults), "configured": view(configured), "fields": sorted(fields)}))
"""


def test_the_scaler_watches_what_the_service_consumes(deployment: tuple[str, Deployment]) -> None:
    broker, rendered = deployment
    config = rendered.find("ConfigMap")["data"]
    env = project_env(rendered.project)
    output = run([sys.executable, "-c", SETTINGS_PROBE, json.dumps(config)], rendered.project, env)
    settings = json.loads(output.strip().splitlines()[-1])
    defaults, configured = settings["defaults"], settings["configured"]
    # Every key of the ConfigMap is a setting the service reads (a typo would be ignored silently).
    assert {key.lower() for key in config} - set(settings["fields"]) == set()
    # The ConfigMap keeps the service's defaults for the names the scaler depends on.
    for name in ("queue_name", "group_id", "shutdown_timeout_seconds", "metrics_port", "topic_partitions"):
        assert configured.get(name) == defaults.get(name), name
    metadata = rendered.find("ScaledObject")["spec"]["triggers"][0]["metadata"]
    scaled = rendered.find("ScaledObject")["spec"]
    if broker == "rabbitmq":
        assert metadata["queueName"] == configured["queue_name"]
        assert int(metadata["value"]) == configured["prefetch_count"]
    elif broker == "redis":
        assert metadata["stream"] == configured["queue_name"]
        assert metadata["consumerGroup"] == configured["consumer_group"]
    elif broker == "kafka":
        assert metadata["topic"] == configured["queue_name"]
        assert metadata["consumerGroup"] == configured["group_id"]
        assert scaled["maxReplicaCount"] <= configured["topic_partitions"]
    worker = rendered.find("Deployment", "-worker")
    assert scaled["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= configured["shutdown_timeout_seconds"] + 5
    [container] = pod["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": configured["metrics_port"]}]
    assert container["command"] == ["python", "-m", "task_service.worker"]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(configured["metrics_port"])


def test_the_pods_run_as_the_image_does(deployment: tuple[str, Deployment]) -> None:
    _, rendered = deployment
    dockerfile = (rendered.project / "Dockerfile").read_text()
    uid = int(re.search(r"^USER (\d+):", dockerfile, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert uid == 10001
    config_name = rendered.find("ConfigMap")["metadata"]["name"]
    for component in ("api", "worker"):
        pod = rendered.find("Deployment", f"-{component}")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        [container] = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert {"requests", "limits"} <= set(container["resources"])
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
        assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
        assert container["envFrom"] == [{"configMapRef": {"name": config_name}}]
        env = {e["name"]: e for e in container["env"]}
        assert env["BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == secret_name(rendered)
        if component == "api":
            assert env["CONSUMER_ENABLED"]["value"] == "false"
    assert "Secret" not in rendered.kinds()
    api = rendered.find("Deployment", "-api")["spec"]["template"]["spec"]
    # preStop sleep + uvicorn's graceful shutdown (the image's CMD) fit in the grace period.
    graceful = int(re.search(r'"--timeout-graceful-shutdown", "(\d+)"', dockerfile).group(1))  # type: ignore[union-attr]
    pre_stop = api["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert api["terminationGracePeriodSeconds"] > pre_stop + graceful


def test_no_secret_is_in_any_manifest(deployment: tuple[str, Deployment]) -> None:
    _, rendered = deployment
    for path in (rendered.project / "deploy").rglob("*.yaml"):
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"credentials in {path}"
        assert "kind: Secret" not in text, path


def test_checkov_passes_with_only_the_named_skips(
    deployment: tuple[str, Deployment], tools: Path, tmp_path: Path
) -> None:
    _, rendered = deployment
    for path in write_rendered(rendered, tmp_path):
        command = [
            str(tools / "checkov"),
            "--file", str(path),
            "--framework", "kubernetes",
            "--skip-download",  # offline: no guidelines or severities from the vendor's API
            "--skip-check", ",".join(CHECKOV_SKIPS),
            "--compact", "--quiet",
        ]  # fmt: skip
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False, env=checkov_env()
        )
        assert result.returncode == 0, f"checkov failed on {path.name}:\n{result.stdout}\n{result.stderr[-3000:]}"
        assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", result.stdout), result.stdout


def checkov_env() -> dict[str, str]:
    """No telemetry and no package scan: only the Kubernetes checks, offline."""
    return {**os.environ, "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "LOG_LEVEL": "ERROR"}


README_SAYS = {
    "rabbitmq": ["protocol: http", "unacknowledged", "ready"],
    "redis": ["lagCount", "consumerGroup: workers"],
    "kafka": ["partition count", "TOPIC_PARTITIONS", "lagThreshold"],
}


def test_the_readme_says_how_to_deploy_and_why_it_scales_so(deployment: tuple[str, Deployment]) -> None:
    broker, rendered = deployment
    readme = (rendered.project / "README.md").read_text()
    section = readme.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    for needed in ["KEDA", "registry", "kubectl apply -k deploy/kubernetes/overlays/production", *README_SAYS[broker]]:
        assert needed in section, needed
    assert "secret generic task-service-broker" in section
