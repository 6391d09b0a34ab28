"""The benchmark's plan: for each broker (tansu started for Kafka), each repetition, each
consumer style, every measure; then the medians, the table, the JSON and the chart.

Repetitions are interleaved (all measures once, then all again) so that a slow spell of the
machine spreads over every figure instead of sinking one of them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bare_e2e
import drains
import http_load
import processor_alone
import report
import services
from bake import TEMPLATE, Combo, bake_and_install


@dataclass
class Settings:
    count: int  # messages per drain
    repeat: int  # repetitions per figure
    http_seconds: float  # load per POST /tasks measurement
    e2e_rate: float  # POST /tasks per second for the latency measure
    e2e_count: int
    processor_count: int  # timed calls of the Processor alone
    io_count: int  # messages of the I/O-bound drain
    kill_count: int  # messages of the drain killed part way: long enough to kill it a third of the way

    @classmethod
    def full(cls) -> Settings:
        return cls(
            count=20_000,
            repeat=3,
            http_seconds=5,
            e2e_rate=100,
            e2e_count=300,
            processor_count=20_000,
            io_count=2_000,
            kill_count=20_000,
        )

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            count=300,
            repeat=1,
            http_seconds=1,
            e2e_rate=50,
            e2e_count=50,
            processor_count=2_000,
            io_count=200,
            kill_count=3_000,
        )


Samples = dict[str, list[float | None]]


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def broker_address(broker: str) -> Iterator[str | None]:
    """tansu's bootstrap address for Kafka (started here, stopped after); None for the others."""
    if broker != "kafka":
        yield None
        return
    sys.path.insert(0, str(TEMPLATE))
    from tests.kafka_broker import running_tansu

    with running_tansu() as bootstrap:
        yield bootstrap


def measure_peers(drain: drains.Drain, samples: dict[str, Samples], styles: tuple[str, ...]) -> None:
    """Peers depend on the broker only: one figure, shown in each style's row."""
    log(f"{drain.broker}: Celery (solo pool, acks_late)")
    celery = drains.celery(drain)
    log(f"{drain.broker}: FastStream")
    faststream = drains.faststream(drain)
    for style in styles:
        samples[style]["celery_msgs_per_s"].append(celery)
        samples[style]["faststream_msgs_per_s"].append(faststream)


def overhead_us(worker: float, bare: float) -> float:
    """What the framework adds to each message over the bare client loop, in microseconds."""
    return 1e6 / worker - 1e6 / bare


def measure_combo(combo: Combo, drain: drains.Drain, settings: Settings, samples: Samples) -> None:
    """Every measure of one broker x style, once."""
    measure_consuming(combo, drain, settings, samples)
    measure_processor(combo, drain, settings, samples)
    log(f"{combo.name}: I/O-bound handler (10 ms asleep, 8 at a time), {settings.io_count} messages")
    samples["io_msgs_per_s"].append(drains.io_bound(drain, combo, settings.io_count))
    log(f"{combo.name}: SIGKILL a third of the way through {settings.kill_count} messages, then a second worker")
    samples["kill_duplicates"].append(drains.kill_duplicates(drain, combo, settings.kill_count))
    measure_http(combo, drain, settings, samples)
    measure_bare_e2e(combo, drain, settings, samples)


def measure_consuming(combo: Combo, drain: drains.Drain, settings: Settings, samples: Samples) -> None:
    """The worker at INFO and at WARNING, the bare loop, and what the worker adds to each message."""
    log(f"{combo.name}: generated worker draining {settings.count} messages")
    rate, rss = drains.worker(drain, combo)
    samples["worker_msgs_per_s"].append(rate)
    samples["worker_rss_mb"].append(rss)
    log(f"{combo.name}: generated worker at LOG_LEVEL=WARNING")
    quiet = drains.quiet_worker(drain, combo)
    samples["worker_quiet_msgs_per_s"].append(quiet)
    log(f"{combo.name}: bare client loop")
    bare = drains.bare(drain, combo)
    samples["bare_msgs_per_s"].append(bare)
    samples["overhead_us"].append(overhead_us(rate, bare))
    samples["overhead_quiet_us"].append(overhead_us(quiet, bare))


def measure_processor(combo: Combo, drain: drains.Drain, settings: Settings, samples: Samples) -> None:
    log(f"{combo.name}: the Processor alone, {settings.processor_count} calls at INFO and at WARNING")
    for field, level in (("processor_us", "INFO"), ("processor_quiet_us", "WARNING")):
        samples[field].append(processor_alone.measure(combo, level, settings.processor_count, drain.logs))


def measure_http(combo: Combo, drain: drains.Drain, settings: Settings, samples: Samples) -> None:
    log(f"{combo.name}: POST /tasks, with and without the publish ({http_load.client_name()})")
    api, bare = services.http(combo, drain.kafka, drain.logs, settings.http_seconds)
    samples["http_rps"].append(api.rps)
    samples["http_p50_ms"].append(api.p50_ms)
    samples["http_p99_ms"].append(api.p99_ms)
    samples["http_bare_rps"].append(bare.rps)
    log(f"{combo.name}: end-to-end latency at {settings.e2e_rate:g}/s")
    latencies = sorted(services.end_to_end(combo, drain.kafka, drain.logs, settings.e2e_rate, settings.e2e_count))
    samples["e2e_p50_ms"].append(http_load.percentile(latencies, 50) * 1000)
    samples["e2e_p99_ms"].append(http_load.percentile(latencies, 99) * 1000)


def measure_bare_e2e(combo: Combo, drain: drains.Drain, settings: Settings, samples: Samples) -> None:
    """Kafka only (None, n/a, elsewhere): the bare client's own end-to-end latency at the e2e
    measure's rate and count, with its default fetch settings (bench/bare_e2e.py)."""
    if drain.kafka is None:
        samples["bare_e2e_p50_ms"].append(None)
        samples["bare_e2e_p99_ms"].append(None)
        return
    log(f"{combo.name}: the bare client's end-to-end latency at {settings.e2e_rate:g}/s")
    latencies = sorted(bare_e2e.measure(combo, drain.kafka, settings.e2e_rate, settings.e2e_count, drain.logs))
    samples["bare_e2e_p50_ms"].append(http_load.percentile(latencies, 50) * 1000)
    samples["bare_e2e_p99_ms"].append(http_load.percentile(latencies, 99) * 1000)


def measure_broker(broker: str, styles: tuple[str, ...], settings: Settings, logs: Path) -> list[dict[str, Any]]:
    samples: dict[str, Samples] = {style: defaultdict(list) for style in styles}
    with broker_address(broker) as kafka:
        drain = drains.Drain(broker, settings.count, kafka, logs)
        for repetition in range(settings.repeat):
            log(f"{broker}: repetition {repetition + 1} of {settings.repeat}")
            for style in styles:
                measure_combo(Combo(broker, style), drain, settings, samples[style])
            measure_peers(drain, samples, styles)
    return [report.summarise(broker, style, samples[style]) for style in styles]


def machine(settings: Settings, load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What the figures depend on, load average included: the machine may be shared."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=TEMPLATE)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "http_client": http_load.client_name(),
        "http_connections": http_load.CONNECTIONS,
        "messages_per_drain": settings.count,
        "repetitions": settings.repeat,
        "http_seconds": settings.http_seconds,
        "e2e_rate_per_s": settings.e2e_rate,
        "e2e_tasks": settings.e2e_count,
        "processor_calls": settings.processor_count,
        "io_messages": settings.io_count,
        "kill_messages": settings.kill_count,
        "template_commit": commit.stdout.strip(),
        "celery_pool": "solo, prefetch 100, acks_late",
    }


def run(brokers: list[str], styles: tuple[str, ...], settings: Settings, out: Path) -> None:
    load_before = os.getloadavg()
    started = time.monotonic()
    combos = [Combo(broker, style) for broker in brokers for style in styles]
    work = Path(tempfile.mkdtemp(prefix="bench-"))  # bakes and logs: outside the repository, tens of MB
    try:
        log(f"baking and installing {', '.join(combo.name for combo in combos)}")
        bake_and_install(combos, work)
        runs = [run for broker in brokers for run in measure_broker(broker, styles, settings, work / "logs")]
    except BaseException:
        log(f"failed; the measured programs' logs are in {work / 'logs'}")
        raise
    shutil.rmtree(work, ignore_errors=True)
    info = machine(settings, load_before)
    info["duration_s"] = round(time.monotonic() - started)
    report.write_json(out, runs, info)
    report.chart(out.with_suffix(".png"), runs)
    print(report.table(runs))
    load = ", ".join(f"{value:g}" for value in info["load_average_after"])
    print(f"\n{info['cpus']} CPUs ({info['cpu']}), load average {load}; medians of {settings.repeat}, [min-max]")
    log(f"wrote {out} and {out.with_suffix('.png')} in {info['duration_s']} s")
