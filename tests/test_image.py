"""The generated image, built from the Dockerfile as it ships and run for real with Podman, for every
broker and consumer style: the API container, the worker alone, and what the image holds.

The base is a stand-in for python:3.11-slim-bookworm (Debian's Python 3.11, see tests/podman.py);
README.md, "What the image test proves", says what that leaves unproven."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import podman as engine
from .conftest import BROKER_TEST_ENV, BROKERS, CONSUMERS, STYLE_TEST_ENV, TEMPLATE, bake, delete_queues, require_broker
from .kafka_broker import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("image")]

COMBINATIONS = [pytest.param(b, c, id=f"{b}-{c}") for b in BROKERS for c in CONSUMERS]
SLUG = "task_service"
API_PORT = 8000  # the image's: its CMD and HEALTHCHECK both name it, and host networking shares it
GRACEFUL_SECONDS = 25  # uvicorn's --timeout-graceful-shutdown in the image's CMD
# The layers the Dockerfile adds on top of the base (the virtual environment, the user): the largest
# measured was 77.9 MB (kafka/threaded: confluent-kafka bundles librdkafka), the others 64-68 MB; 15 % headroom.
ADDED_LAYERS_BUDGET_MB = 90
# Planted in the project before the build; .dockerignore must keep every one of them out of the image.
DECOY = f"decoy-secret-{uuid.uuid4().hex}"
DECOYS = [".env", ".env.local", "local.pem", "deploy.key", "__pycache__/decoy.cpython-311.pyc", ".pytest_cache/v"]
# Tools that build software, which the runtime image must not carry.
BUILD_TOOLS = re.compile(
    r"^(usr/(local/)?bin/(gcc|cc|c\+\+|g\+\+|make|ld)(-[\d.]+)?|.*/site-packages/(hatchling|wheel|build))/?$"
)
SECRET_NAMES = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_KEY|PRIVATE", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"[a-z+]+://[^/\s:@]+:[^/\s@]+@")


@dataclass
class Image:
    tag: str
    build_stage: str
    project: Path
    build_seconds: float


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> engine.Podman:
    engine.require_tools()
    tool = engine.Podman(tmp_path_factory.mktemp("podman"))
    seconds = engine.ensure_stand_in(tool)
    engine.report("base", stand_in_s=round(seconds, 1))
    return tool


@pytest.fixture(scope="module")
def images(
    podman: engine.Podman, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[tuple[str, str], Future[Image]]:
    """Every image this run's selected tests need, built at once in parallel (they share the base).
    A failed build fails the tests of its image only."""
    wanted = sorted(
        {
            (item.callspec.params["broker"], item.callspec.params["consumer"])
            for item in request.session.items
            if getattr(item, "path", None) == Path(__file__) and hasattr(item, "callspec")
        }
    )
    mounts = engine.build_mounts(tmp_path_factory.mktemp("pip"))
    checkout = hashlib.sha256(str(TEMPLATE).encode()).hexdigest()[:12]

    def prepare(broker: str, consumer: str) -> Path:
        """A baked project with decoys planted where .dockerignore must keep them out."""
        project = bake(tmp_path_factory.mktemp(f"image-{broker}-{consumer}"), broker=broker, consumer=consumer)
        (project / ".git").mkdir()
        (project / ".git" / "config").write_text(f"[credential]\n\thelper = {DECOY}\n")
        for decoy in DECOYS:
            for where in (project, project / "src" / SLUG):
                (where / decoy).parent.mkdir(parents=True, exist_ok=True)
                (where / decoy).write_text(f"TOKEN={DECOY}\n")
        return project

    def build(broker: str, consumer: str, project: Path) -> Image:
        tag = f"localhost/template-test/{broker}-{consumer}:{checkout}"
        started = time.monotonic()
        # --format docker keeps HEALTHCHECK (OCI images have none); --pull=never: the stand-in base.
        common = ["build", "--pull=never", "--format", "docker", *mounts]
        podman(*common, "-t", tag, str(project), timeout=900)
        seconds = time.monotonic() - started
        podman(*common, "--target", "build", "-t", f"{tag}-build", str(project), timeout=900)
        engine.report(f"{broker}-{consumer}", build_s=round(seconds, 1))
        return Image(tag, f"{tag}-build", project, seconds)

    pool = ThreadPoolExecutor(max_workers=3)
    # Baked one after the other (cookiecutter changes the working directory), built at once.
    projects = {combination: prepare(*combination) for combination in wanted}
    futures = {combination: pool.submit(build, *combination, project) for combination, project in projects.items()}
    pool.shutdown(wait=False)
    return futures


def image_for(images: dict[tuple[str, str], Future[Image]], broker: str, consumer: str) -> Image:
    return images[(broker, consumer)].result(timeout=1200)


def container_env(broker: str, consumer: str, queue: str, **extra: str) -> list[str]:
    env = {
        "BROKER_URL": require_broker(broker),
        "QUEUE_NAME": queue,
        **BROKER_TEST_ENV.get(broker, {}),
        **STYLE_TEST_ENV.get((broker, consumer), {}),
        **extra,
    }
    return [option for name, value in env.items() for option in ("-e", f"{name}={value}")]


def wait_ready(base: str, api: engine.Container) -> None:
    engine.poll("/health/ready answers 200", lambda: engine.http("GET", f"{base}/health/ready")[0] == 200, 90, api.logs)


def fail_if_port_taken() -> None:
    if engine.port_in_use(API_PORT):
        pytest.fail(f"something already listens on 127.0.0.1:{API_PORT}, the port the image's API takes", pytrace=False)


@pytest.mark.parametrize(("broker", "consumer"), COMBINATIONS)
def test_the_api_container_serves_processes_and_stops_gracefully(
    podman: engine.Podman, images: dict[tuple[str, str], Future[Image]], broker: str, consumer: str
) -> None:
    image = image_for(images, broker, consumer)
    queue = f"image-api-{consumer}-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{API_PORT}"
    # The image's API listens on 8000 on the host's network: one API container at a time on this machine.
    with engine.machine_lock("port-8000"):
        fail_if_port_taken()
        api = engine.start(podman, image.tag, *container_env(broker, consumer, queue))
        try:
            assert api.podman("exec", api.name, "id", "-u").strip() == "10001"
            wait_ready(base, api)

            status, body = engine.http(
                "POST",
                f"{base}/tasks",
                {"type": "process_image", "payload": {"image_url": "https://example.com/a.png"}},
            )
            assert status == 202, body
            task_id = json.loads(body)["id"]

            def processed() -> bool:
                text = engine.http("GET", f"{base}/metrics")[1]
                return engine.metric(text, "tasks_processed_total", outcome="succeeded") >= 1

            engine.poll("the task is processed", processed, 60, api.logs)
            handled = [line for line in engine.json_lines(api.logs()) if line.get("task_id") == task_id]
            assert any(line["logger"] == f"{SLUG}.handlers" for line in handled), api.logs()

            # The image's own HEALTHCHECK, run the way the engine runs it.
            probe = podman.run("healthcheck", "run", api.name, check=False)
            assert probe.returncode == 0, probe.stdout + probe.stderr
            health = api.state().get("Health") or api.state().get("Healthcheck")
            assert isinstance(health, dict)
            assert health["Status"] == "healthy", health

            seconds, code = api.stop()
            log = api.logs()
        finally:
            api.remove()
    engine.report(f"{broker}-{consumer}", api_stop_s=round(seconds, 1))
    assert code == 0, log
    assert seconds < GRACEFUL_SECONDS, f"podman stop took {seconds:.1f} s\n{log}"
    lines = engine.json_lines(log)
    messages = [str(line["message"]) for line in lines]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines), log
    # uvicorn stops taking requests, then the lifespan stops the consumer and the publisher.
    shutting = messages.index("Shutting down")
    assert "Application shutdown complete." in messages[shutting:], log
    delete_queues(broker, queue, f"{queue}.dlq")


@pytest.mark.parametrize(("broker", "consumer"), COMBINATIONS)
def test_the_worker_alone_consumes_what_the_api_accepted(
    podman: engine.Podman, images: dict[tuple[str, str], Future[Image]], broker: str, consumer: str
) -> None:
    image = image_for(images, broker, consumer)
    queue = f"image-worker-{consumer}-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{API_PORT}"
    metrics_port = free_port()
    # The image's API listens on 8000 on the host's network: one API container at a time on this machine.
    with engine.machine_lock("port-8000"):
        fail_if_port_taken()
        # As docker-compose.yml runs them: the API only publishes, the worker consumes.
        api = engine.start(podman, image.tag, *container_env(broker, consumer, queue, CONSUMER_ENABLED="false"))
        worker: engine.Container | None = None
        try:
            wait_ready(base, api)
            ids = []
            for n in range(3):
                status, body = engine.http(
                    "POST",
                    f"{base}/tasks",
                    {"type": "process_image", "payload": {"image_url": f"https://example.com/{n}.png"}},
                )
                assert status == 202, body
                ids.append(json.loads(body)["id"])
            worker = engine.start(
                podman,
                image.tag,
                "--no-healthcheck",  # as compose does: the HEALTHCHECK probes the API's port
                *container_env(broker, consumer, queue, METRICS_PORT=str(metrics_port)),
                command=("python", "-m", f"{SLUG}.worker"),
            )

            def worker_processed() -> str:
                """The worker's metrics once it counts every task as succeeded, else ""."""
                text = engine.http("GET", f"http://127.0.0.1:{metrics_port}/metrics")[1]
                return text if engine.metric(text, "tasks_processed_total", outcome="succeeded") >= len(ids) else ""

            text = engine.poll("the worker processes the three tasks", worker_processed, 90, worker.logs)
            assert engine.metric(text, "tasks_processed_total", outcome="succeeded") == len(ids), text
            api_metrics = engine.http("GET", f"{base}/metrics")[1]
            assert engine.metric(api_metrics, "tasks_published_total") == len(ids), api_metrics
            assert engine.metric(api_metrics, "tasks_processed_total") == 0, api_metrics
            assert worker.podman("exec", worker.name, "id", "-u").strip() == "10001"
            seconds, code = worker.stop()
            log = worker.logs()
        finally:
            if worker is not None:
                worker.remove()
            api.remove()
    engine.report(f"{broker}-{consumer}", worker_stop_s=round(seconds, 1))
    assert code == 0, log
    lines = engine.json_lines(log)
    handled = {line.get("task_id") for line in lines if line["logger"] == f"{SLUG}.handlers"}
    assert handled == set(ids), log
    messages = [str(line["message"]) for line in lines]
    assert messages[-1] == "worker stopped", log
    assert any(message.startswith("stop signal received") for message in messages), log
    delete_queues(broker, queue, f"{queue}.dlq")


def added_files(podman: engine.Podman, image: Image, workdir: Path) -> Iterator[tuple[str, int, bytes | None]]:
    """(path, size, content of a regular file) for every entry of the layers the Dockerfile adds
    on top of the stand-in base, from `podman save`."""
    archive = workdir / "image.tar"
    podman("save", "--format", "docker-archive", "-o", str(archive), image.tag, timeout=300)
    base: list[str] = podman.inspect(engine.OFFICIAL)["RootFS"]["Layers"]  # type: ignore[index]
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        config = json.load(outer.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        assert config["rootfs"]["diff_ids"][: len(base)] == base, "the image does not start with the stand-in's layers"
        layers = manifest["Layers"][len(base) :]
        assert layers, "the Dockerfile added no layer"
        for name in layers:
            with tarfile.open(fileobj=outer.extractfile(name)) as layer:
                for member in layer:
                    content = layer.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
                    yield member.name.removeprefix("./"), member.size, content


@pytest.mark.parametrize(("broker", "consumer"), COMBINATIONS)
def test_the_image_holds_no_secrets_no_sources_and_no_build_tools(
    podman: engine.Podman,
    images: dict[tuple[str, str], Future[Image]],
    broker: str,
    consumer: str,
    tmp_path: Path,
) -> None:
    image = image_for(images, broker, consumer)

    # The build stage saw only what .dockerignore let through: no decoy reached /build.
    copied = podman("run", "--rm", "--network", "none", image.build_stage, "find", "/build", "-mindepth", "1").split()
    assert {path.split("/")[2] for path in copied} == {"pyproject.toml", "README.md", "src"}, copied
    leaked = [path for path in copied if any(path.endswith(f"/{SLUG}/{decoy}") for decoy in DECOYS)]
    assert not leaked, f".dockerignore let these into the build: {leaked}"
    assert f"/build/src/{SLUG}/handlers.py" in copied, copied

    # By path under tests/: names alone (helpers.py, common.py, client.py) are common in site-packages.
    project_tests = {
        str(path.relative_to(image.project))
        for path in (image.project / "tests").rglob("*.py")
        if path.name not in {"__init__.py", "conftest.py"}
    }
    assert "tests/integration/test_faults.py" in project_tests, project_tests
    added = 0
    findings = []
    paths = set()
    for path, size, content in added_files(podman, image, tmp_path):
        added += size
        paths.add(path)
        name = path.rsplit("/", 1)[-1]
        if name in {".env", ".git", ".github", "pip.conf", ".pytest_cache", ".mypy_cache", ".ruff_cache"}:
            findings.append(f"{path}: must stay out of the image")
        if path.startswith(("build/", "root/.cache", "tmp/pip")) or "/.cache/pip" in path:
            findings.append(f"{path}: a build directory or pip's cache")
        if path == engine.IMAGE_CA_BUNDLE.lstrip("/"):
            findings.append(f"{path}: the build's certificate bundle")
        if any(path == test or path.endswith("/" + test) for test in project_tests):
            findings.append(f"{path}: the project's tests")
        if BUILD_TOOLS.match(path):
            findings.append(f"{path}: a build tool")
        if content is not None and DECOY.encode() in content:
            findings.append(f"{path}: holds a decoy planted in the project")
    assert not findings, "\n".join(findings)
    # The scan saw the layers that matter: the installed project is in them.
    assert any(path.endswith(f"site-packages/{SLUG}/handlers.py") for path in paths), sorted(paths)[:50]

    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.tag)
    config = podman.inspect(image.tag)["Config"]
    env = config.get("Env") or []  # type: ignore[union-attr]
    for text in (history, json.dumps(config)):
        assert DECOY not in text
        assert not URL_WITH_PASSWORD.search(text), text
        for host in engine.build_hosts():
            assert host not in text, f"the build's index {host} is recorded in the image"
    assert not [variable for variable in env if SECRET_NAMES.search(variable.split("=", 1)[0])], env
    assert "BROKER_URL" not in {variable.split("=", 1)[0] for variable in env}, env

    megabytes = added / 1e6
    engine.report(f"{broker}-{consumer}", added_layers_mb=round(megabytes, 1))
    assert megabytes <= ADDED_LAYERS_BUDGET_MB, f"the Dockerfile's layers take {megabytes:.1f} MB"
