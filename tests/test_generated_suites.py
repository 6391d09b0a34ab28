"""Each broker and consumer style, tried as a new user would: generate, `pip install -e ".[dev]"`
into a fresh virtual environment, and run the project's whole `pytest` against the real broker."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import fault_report
from .conftest import (
    BROKER_TEST_ENV,
    BROKERS,
    CONSUMERS,
    STYLE_TEST_ENV,
    TASK_STORES,
    bake,
    require_broker,
    require_store,
    run,
)
from .kafka_broker import TansuError, free_port, running_tansu

# Each broker and style once with a task store, the stores alternating so that every store meets
# every broker and every style; and each broker once more without one (the styles alternating), as
# most projects are generated.
STORES = [store for store in TASK_STORES if store != "none"]
RUNS = [
    *[
        (broker, consumer, STORES[(b + c) % len(STORES)])
        for b, broker in enumerate(BROKERS)
        for c, consumer in enumerate(CONSUMERS)
    ],
    *[(broker, CONSUMERS[b % len(CONSUMERS)], "none") for b, broker in enumerate(BROKERS)],
]
SUITES = [pytest.param(*run, id=f"{run[0]}-{run[1]}-store_{run[2]}") for run in RUNS]
# The fault scenarios each broker's suite tallies (by number): every broker's, and those on broker
# processes of the suite's own. Those of a broker's own run once per style, in the runs with a task
# store; its cluster tests (three RabbitMQ nodes; a Redis primary, replica and three sentinels) once
# per broker, in the run without one, which leaves out the others to save time. A project's own CI
# runs them all.
SCENARIOS = {str(n) for n in range(1, 12)}
BROKER_SCENARIOS = {"rabbitmq": {"12", "13", "14", "19"}, "redis": {"15", "16", "17"}}
BROKER_FAULT_FILES = {
    "rabbitmq": "tests/integration/test_rabbitmq_faults.py",
    "redis": "tests/integration/test_redis_faults.py",
}
CLUSTER_SCENARIOS = {"rabbitmq": {"20"}, "redis": {"18"}}
CLUSTER_RUNS = {run for run in RUNS if run[2] == "none"}


@contextlib.contextmanager
def proxied_kafka(env: dict[str, str]) -> Iterator[None]:
    """A second tansu for the fault tests, advertising the port where their proxy will listen (the
    generated docker-compose.yml's FAULTS listener does the same with Apache Kafka)."""
    proxy_port = free_port()
    try:
        with running_tansu(advertised_port=proxy_port) as upstream:
            env["KAFKA_PROXY_PORT"] = str(proxy_port)
            env["KAFKA_PROXY_UPSTREAM"] = upstream
            yield
    except TansuError as error:
        pytest.fail(f"no Kafka-compatible broker for the fault tests: {error}")


def fresh_venv(project: Path) -> Path:
    """A virtual environment with the project installed the way its README says."""
    venv = project / ".venv"
    run([sys.executable, "-m", "venv", str(venv)], project)
    python = venv / "bin" / "python"
    # --no-compile: the suite compiles what it imports; byte-compiling all of site-packages costs ~6 s a run.
    install = ["install", "--quiet", "--disable-pip-version-check", "--no-compile", "-e", ".[dev]"]
    run([str(python), "-m", "pip", *install], project)
    return python


@pytest.mark.slow
@pytest.mark.parametrize(("broker", "consumer", "store"), SUITES)
def test_the_generated_suite_passes_against_the_real_broker(
    tmp_path: Path, broker: str, consumer: str, store: str
) -> None:
    url = require_broker(broker)
    project = bake(tmp_path, broker=broker, consumer=consumer, use_docker="yes", ci="github", task_store=store)
    python = fresh_venv(project)
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["BROKER_URL"] = url
    if store != "none":
        env["TASK_STORE_URL"] = require_store(store)
    env.update(BROKER_TEST_ENV.get(broker, {}))
    env.update(STYLE_TEST_ENV.get((broker, consumer), {}))
    env["FAULT_REPORT"] = str(report := fault_report.report_path(broker, consumer, store))
    with proxied_kafka(env) if broker == "kafka" else contextlib.nullcontext():
        with_cluster = (broker, consumer, store) in CLUSTER_RUNS
        own_faults = [f"--ignore={BROKER_FAULT_FILES[broker]}"] if broker in BROKER_FAULT_FILES else []
        selection = own_faults if with_cluster else ["-m", "not cluster"]
        output = run(
            [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", *selection], project, env, timeout=900
        )
    # pytest's summary line: the last that counts results (a client library's log line written at
    # interpreter exit, such as librdkafka's, may come after it).
    summaries = [line for line in output.splitlines() if re.search(r"\b\d+ \w+.* in [\d.]+s\b", line)]
    assert summaries, output
    summary = summaries[-1]
    assert re.search(r"\b\d+ passed\b", summary), output
    for bad in ("failed", "skipped", "error"):
        assert bad not in summary, output
    # Every fault scenario ran and lost nothing.
    tallies = fault_report.read(report)
    expected = SCENARIOS | (CLUSTER_SCENARIOS if with_cluster else BROKER_SCENARIOS).get(broker, set())
    assert {str(t["scenario"]).split()[0] for t in tallies} == expected, tallies
    assert [t for t in tallies if t["lost"] or t.get("unexpected")] == []
    # The integration tests ran (were collected and passed), not just the unit tests.
    integration = run(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only", "-m", "integration"],
        project,
        env,
    )
    assert re.search(r"\b([1-9]\d*) tests? collected|^([1-9]\d*)/", integration, re.M), integration
