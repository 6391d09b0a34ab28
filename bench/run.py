"""Benchmark the generated service against its ceilings and its peers, on the local brokers.

    python bench/run.py [--quick] [--brokers rabbitmq,redis,kafka] [--out FILE]

On first use it makes bench/.venv from bench/requirements.txt (peers and client libraries
included) and re-runs itself there. It then bakes one project per broker x consumer style from
this checkout, installs them, and measures everything in one run so that the figures compare:
consuming (generated worker, bare client loop, Celery, FastStream), POST /tasks with and without
the publish, end-to-end latency and the worker's peak memory; then, per broker x style:
- overhead_us / overhead_quiet_us: what the worker adds to each message over the bare loop,
  1e6/worker - 1e6/bare, at LOG_LEVEL=INFO and at WARNING;
- processor_us / processor_quiet_us: the Processor alone, in a process of its own, at INFO and
  at WARNING (bench/processor_alone.py);
- io_msgs_per_s: a handler that waits 10 ms, 8 at a time, against the ideal 800 (bench/io_worker.py);
- kill_duplicates: messages handled twice when a worker is SIGKILLed part way through a drain
  and a second one finishes it (none may be lost);
- bare_e2e_p50_ms / bare_e2e_p99_ms, Kafka only: the bare client's own end-to-end latency at the
  same rate and count, with its default fetch settings as the worker's (bench/bare_e2e.py); Kafka's
  e2e p50 meets its target at <= 50 ms or at <= 1.2 x this one's.
Needs RabbitMQ at 127.0.0.1:5672 and Redis at 127.0.0.1:6379; for Kafka it starts tansu (see
tests/kafka_broker.py). Writes markdown tables to stdout, the figures to --out (JSON) and a chart
beside it (.png).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv"
REQUIREMENTS = BENCH / "requirements.txt"
BROKERS = ("rabbitmq", "redis", "kafka")
STYLES = ("async", "threaded")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred messages, one repetition: a smoke test")
    parser.add_argument("--brokers", default=",".join(BROKERS), help="comma-separated subset of %(default)s")
    parser.add_argument("--out", type=Path, default=BENCH / "results.json", help="the JSON; the chart goes beside it")
    parser.add_argument("--repeat", type=int, help="repetitions per figure (default 3, 1 with --quick)")
    args = parser.parse_args()
    unknown = set(args.brokers.split(",")) - set(BROKERS)
    if unknown:
        parser.error(f"unknown broker(s) {', '.join(sorted(unknown))}; choose from {', '.join(BROKERS)}")
    return args


def ensure_environment() -> None:
    """Re-run inside bench/.venv, making it (or refreshing it when requirements.txt changed) first."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements-sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if not python.exists() or not stamp.exists() or stamp.read_text() != wanted:
        print(f"==> preparing {VENV} from {REQUIREMENTS.name} (first use only)", file=sys.stderr, flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        installed = subprocess.run([*pip, "-r", str(REQUIREMENTS)], capture_output=True, text=True)
        if installed.returncode != 0:
            sys.exit(f"ERROR: installing {REQUIREMENTS} failed:\n{installed.stdout}{installed.stderr}")
        stamp.write_text(wanted)
    os.execv(python, [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def main() -> None:
    args = parse_args()
    ensure_environment()
    import measure  # the benchmark proper: third-party imports only once inside bench/.venv

    settings = measure.Settings.quick() if args.quick else measure.Settings.full()
    if args.repeat:
        settings.repeat = args.repeat
    measure.run([broker for broker in BROKERS if broker in args.brokers.split(",")], STYLES, settings, args.out)


if __name__ == "__main__":
    main()
