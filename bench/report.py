"""The benchmark's outputs: medians with their spread, a markdown table, the JSON and a chart
of the ratios that the targets are about."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

FIELDS = [
    "worker_msgs_per_s",
    "bare_msgs_per_s",
    "worker_quiet_msgs_per_s",
    "celery_msgs_per_s",
    "faststream_msgs_per_s",
    "http_rps",
    "http_bare_rps",
    "http_p50_ms",
    "http_p99_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "worker_rss_mb",
]
# ratio name: (numerator, denominator, target), as the issue states them
TARGETS = {
    "worker / bare loop": ("worker_msgs_per_s", "bare_msgs_per_s", 0.8),
    "worker / Celery": ("worker_msgs_per_s", "celery_msgs_per_s", 2.0),
    "POST /tasks / no publish": ("http_rps", "http_bare_rps", 0.5),
}
RSS_LIMIT_MB = 80.0


def summarise(broker: str, consumer: str, samples: dict[str, list[float | None]]) -> dict[str, Any]:
    """One run: each figure the median of its repetitions; `spread` keeps [min, max] and `samples` all."""
    run: dict[str, Any] = {"broker": broker, "consumer": consumer}
    spread: dict[str, list[float]] = {}
    for field in FIELDS:
        values = [value for value in samples.get(field, []) if value is not None]
        run[field] = round(statistics.median(values), 2) if values else None
        if values:
            spread[field] = [round(min(values), 2), round(max(values), 2)]
    run["spread"] = spread
    run["samples"] = {field: samples.get(field, []) for field in FIELDS}
    run["ratios"] = {name: ratio(run, top, bottom) for name, (top, bottom, _) in TARGETS.items()}
    return run


def ratio(run: dict[str, Any], top: str, bottom: str) -> float | None:
    if run.get(top) is None or not run.get(bottom):
        return None
    return round(run[top] / run[bottom], 2)


def cell(run: dict[str, Any], field: str, digits: int = 0) -> str:
    """`median [min-max]`, or n/a where a peer does not apply."""
    value = run[field]
    if value is None:
        return "n/a"
    low, high = run["spread"][field]
    if low == high:
        return f"{value:,.{digits}f}"
    return f"{value:,.{digits}f} [{low:,.{digits}f}-{high:,.{digits}f}]"


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f} {'✓' if value >= target else '✗'}"


def table(runs: list[dict[str, Any]]) -> str:
    """Two markdown tables: consuming, then HTTP and latency. Ratios marked against their targets."""
    lines = [
        "| broker | consumer | worker msg/s | bare loop msg/s | worker / bare (≥ 0.8) | Celery msg/s "
        "| worker / Celery (≥ 2) | FastStream msg/s | worker RSS MB (< 80) | worker at WARNING msg/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        ratios = run["ratios"]
        rss = run["worker_rss_mb"]
        lines.append(
            f"| {run['broker']} | {run['consumer']} | {cell(run, 'worker_msgs_per_s')} "
            f"| {cell(run, 'bare_msgs_per_s')} "
            f"| {verdict(ratios['worker / bare loop'], 0.8)} | {cell(run, 'celery_msgs_per_s')} "
            f"| {verdict(ratios['worker / Celery'], 2.0)} | {cell(run, 'faststream_msgs_per_s')} "
            f"| {cell(run, 'worker_rss_mb', 1)} {'✓' if rss is not None and rss < RSS_LIMIT_MB else '✗'} "
            f"| {cell(run, 'worker_quiet_msgs_per_s')} |"
        )
    lines += [
        "",
        "| broker | consumer | POST /tasks req/s | no-publish req/s | ratio (≥ 0.5) | POST p50 / p99 ms "
        "| e2e p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['broker']} | {run['consumer']} | {cell(run, 'http_rps')} | {cell(run, 'http_bare_rps')} "
            f"| {verdict(run['ratios']['POST /tasks / no publish'], 0.5)} "
            f"| {cell(run, 'http_p50_ms', 1)} / {cell(run, 'http_p99_ms', 1)} "
            f"| {cell(run, 'e2e_p50_ms', 1)} / {cell(run, 'e2e_p99_ms', 1)} |"
        )
    return "\n".join(lines)


def write_json(path: Path, runs: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs, "machine": machine}, indent=2) + "\n")


def chart(path: Path, runs: list[dict[str, Any]]) -> None:
    """One panel per target: each broker x style's ratio, the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{run['broker']}\n{run['consumer']}" for run in runs]
    figure, axes = plt.subplots(1, len(TARGETS), figsize=(5 * len(TARGETS), 4), constrained_layout=True)
    for axis, (title, (_, _, target)) in zip(axes, TARGETS.items(), strict=True):
        values = [run["ratios"][title] or 0.0 for run in runs]
        colours = ["tab:green" if value >= target else "tab:red" for value in values]
        axis.bar(names, values, color=colours)
        axis.axhline(target, color="black", linestyle="--", linewidth=1)
        axis.set_title(f"{title} (target ≥ {target:g})")
        axis.tick_params(axis="x", labelsize=8)
        for index, run in enumerate(runs):
            label = "n/a" if run["ratios"][title] is None else f"{values[index]:.2f}"
            axis.annotate(label, (index, values[index]), ha="center", va="bottom", fontsize=8)
    figure.suptitle("Generated service vs. its ceilings and peers (same machine, same run)")
    figure.savefig(path, dpi=100)
    plt.close(figure)
