"""The benchmark's outputs: medians with their spread, markdown tables, the JSON and a chart of
the ratios and budgets that the targets are about.

Kafka's end-to-end p50 is marked ✓ at 50 ms at most, or at 1.2 x the bare client's own p50 on the
same broker at most (bench/bare_e2e.py): a broker that answers fetches late holds every client back.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bake import PREFETCH_COUNT

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
    "bare_e2e_p50_ms",
    "bare_e2e_p99_ms",
    "worker_rss_mb",
    "overhead_us",
    "overhead_quiet_us",
    "processor_us",
    "processor_quiet_us",
    "io_msgs_per_s",
    "kill_duplicates",
]
# ratio name: (numerator, denominator, target), as the issue states them
TARGETS = {
    "worker / bare loop": ("worker_msgs_per_s", "bare_msgs_per_s", 0.8),
    "worker / Celery": ("worker_msgs_per_s", "celery_msgs_per_s", 2.0),
    "POST /tasks / no publish": ("http_rps", "http_bare_rps", 0.7),
}
RSS_LIMIT_MB = 80.0
# figure: (its name in the table, "≤" or "≥", the limit, digits shown), as the issue states them
BUDGETS = {
    "processor_us": ("Processor µs", "≤", 25.0, 1),
    "processor_quiet_us": ("Processor at WARNING µs", "≤", 8.0, 1),
    "overhead_us": ("overhead µs", "≤", 50.0, 1),
    "overhead_quiet_us": ("overhead at WARNING µs", "≤", 20.0, 1),
    "io_msgs_per_s": ("I/O-bound msg/s", "≥", 720.0, 0),
    "kill_duplicates": ("duplicates after SIGKILL", "≤", float(PREFETCH_COUNT), 0),
}
IO_IDEAL_MSGS_PER_S = 800.0  # 8 handlers at a time, 10 ms each (bench/io_worker.py)
# Kafka's e2e p50 meets its target at <= KAFKA_E2E_P50_MS, or at <= KAFKA_E2E_BARE_FACTOR x the bare
# client's own p50 on the same broker (bare_e2e_p50_ms): "or the bare client shown to wait the same".
KAFKA_E2E_P50_MS = 50.0
KAFKA_E2E_BARE_FACTOR = 1.2


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
    return f"{value:.2f} {mark(value >= target)}"


def mark(met: bool) -> str:
    return "✓" if met else "✗"


def within(value: float, sign: str, limit: float) -> bool:
    return value <= limit if sign == "≤" else value >= limit


def budget_cell(run: dict[str, Any], field: str) -> str:
    """The figure's cell, marked against its budget."""
    _, sign, limit, digits = BUDGETS[field]
    if run.get(field) is None:
        return "n/a"
    return f"{cell(run, field, digits)} {mark(within(run[field], sign, limit))}"


def budget_head(field: str) -> str:
    name, sign, limit, _ = BUDGETS[field]
    ideal = f" of {IO_IDEAL_MSGS_PER_S:g}" if field == "io_msgs_per_s" else ""
    return f"{name} ({sign} {limit:g}{ideal})"


def table(runs: list[dict[str, Any]]) -> str:
    """Three markdown tables: consuming, HTTP and latency, then the budgets. Each figure that has
    a target is marked against it."""
    return "\n\n".join([consuming_table(runs), http_table(runs), budget_table(runs)])


def consuming_table(runs: list[dict[str, Any]]) -> str:
    bare, celery = TARGETS["worker / bare loop"][2], TARGETS["worker / Celery"][2]
    lines = [
        f"| broker | consumer | worker msg/s | bare loop msg/s | worker / bare (≥ {bare:g}) | Celery msg/s "
        f"| worker / Celery (≥ {celery:g}) | FastStream msg/s | worker RSS MB (< {RSS_LIMIT_MB:g}) "
        "| worker at WARNING msg/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        ratios = run["ratios"]
        rss = run["worker_rss_mb"]
        lines.append(
            f"| {run['broker']} | {run['consumer']} | {cell(run, 'worker_msgs_per_s')} "
            f"| {cell(run, 'bare_msgs_per_s')} "
            f"| {verdict(ratios['worker / bare loop'], bare)} | {cell(run, 'celery_msgs_per_s')} "
            f"| {verdict(ratios['worker / Celery'], celery)} | {cell(run, 'faststream_msgs_per_s')} "
            f"| {cell(run, 'worker_rss_mb', 1)} {mark(rss is not None and rss < RSS_LIMIT_MB)} "
            f"| {cell(run, 'worker_quiet_msgs_per_s')} |"
        )
    return "\n".join(lines)


def http_table(runs: list[dict[str, Any]]) -> str:
    post = TARGETS["POST /tasks / no publish"][2]
    lines = [
        f"| broker | consumer | POST /tasks req/s | no-publish req/s | ratio (≥ {post:g}) | POST p50 / p99 ms "
        f"| e2e p50 / p99 ms (Kafka p50 ≤ {KAFKA_E2E_P50_MS:g} or ≤ {KAFKA_E2E_BARE_FACTOR:g} x bare) "
        "| bare e2e p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['broker']} | {run['consumer']} | {cell(run, 'http_rps')} | {cell(run, 'http_bare_rps')} "
            f"| {verdict(run['ratios']['POST /tasks / no publish'], post)} "
            f"| {cell(run, 'http_p50_ms', 1)} / {cell(run, 'http_p99_ms', 1)} "
            f"| {e2e_p50_cell(run)} / {cell(run, 'e2e_p99_ms', 1)} "
            f"| {bare_e2e_cell(run)} |"
        )
    return "\n".join(lines)


def bare_e2e_cell(run: dict[str, Any]) -> str:
    """p50 / p99, or one n/a where it is not measured (every broker but Kafka)."""
    if run["bare_e2e_p50_ms"] is None:
        return "n/a"
    return f"{cell(run, 'bare_e2e_p50_ms', 1)} / {cell(run, 'bare_e2e_p99_ms', 1)}"


def e2e_p50_cell(run: dict[str, Any]) -> str:
    """Marked for Kafka only: its consumer's fetch waits are what the target is about. ✓ at p50 ≤
    KAFKA_E2E_P50_MS, or ≤ KAFKA_E2E_BARE_FACTOR x the bare client's p50 (the broker's own wait)."""
    if run["broker"] != "kafka" or run["e2e_p50_ms"] is None:
        return cell(run, "e2e_p50_ms", 1)
    return f"{cell(run, 'e2e_p50_ms', 1)} {mark(kafka_e2e_met(run['e2e_p50_ms'], run['bare_e2e_p50_ms']))}"


def kafka_e2e_met(p50_ms: float, bare_p50_ms: float | None) -> bool:
    """The worker's p50 within the absolute target, or within the factor of the bare client's on this broker."""
    return p50_ms <= KAFKA_E2E_P50_MS or (bare_p50_ms is not None and p50_ms <= KAFKA_E2E_BARE_FACTOR * bare_p50_ms)


def budget_table(runs: list[dict[str, Any]]) -> str:
    """Per message: the Processor alone, what the worker adds over the bare loop, I/O overlap, duplicates."""
    heads = " | ".join(budget_head(field) for field in BUDGETS)
    lines = [f"| broker | consumer | {heads} |", "|---|---|" + "---:|" * len(BUDGETS)]
    for run in runs:
        cells = " | ".join(budget_cell(run, field) for field in BUDGETS)
        lines.append(f"| {run['broker']} | {run['consumer']} | {cells} |")
    return "\n".join(lines)


def write_json(path: Path, runs: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs, "machine": machine}, indent=2) + "\n")


def chart(path: Path, runs: list[dict[str, Any]]) -> None:
    """One panel per ratio target (each broker x style's ratio, the target as a dashed line); below,
    the budgets at most (figure / budget, 1 the line) and the I/O-bound rate against its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{run['broker']}\n{run['consumer']}" for run in runs]
    ratios = list(TARGETS)
    figure, axes = plt.subplot_mosaic(
        [ratios, ["budgets", "budgets", "io"]], figsize=(5 * len(TARGETS), 8), constrained_layout=True
    )
    for title in ratios:
        ratio_panel(axes[title], names, runs, title)
    budget_panel(axes["budgets"], names, runs)
    io_panel(axes["io"], names, runs)
    figure.suptitle("Generated service vs. its ceilings, peers and budgets (same machine, same run)")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def ratio_panel(axis: Any, names: list[str], runs: list[dict[str, Any]], title: str) -> None:
    target = TARGETS[title][2]
    values = [run["ratios"][title] or 0.0 for run in runs]
    axis.bar(names, values, color=["tab:green" if value >= target else "tab:red" for value in values])
    axis.axhline(target, color="black", linestyle="--", linewidth=1)
    axis.set_title(f"{title} (target ≥ {target:g})")
    axis.tick_params(axis="x", labelsize=8)
    for index, run in enumerate(runs):
        label = "n/a" if run["ratios"][title] is None else f"{values[index]:.2f}"
        axis.annotate(label, (index, values[index]), ha="center", va="bottom", fontsize=8)


BUDGET_CLIP = (-1.0, 3.0)  # figure / budget shown within these; a bar cut there has its figure written in


def budget_panel(axis: Any, names: list[str], runs: list[dict[str, Any]]) -> None:
    """Each budget at most as a share of itself, grouped by broker x style: under the line meets it."""
    fields = [field for field, (_, sign, _, _) in BUDGETS.items() if sign == "≤"]
    low, high = BUDGET_CLIP
    width = 0.8 / len(fields)
    for offset, field in enumerate(fields):
        name, _, limit, _ = BUDGETS[field]
        positions = [index + (offset - (len(fields) - 1) / 2) * width for index in range(len(runs))]
        shares = [(run.get(field) or 0.0) / limit for run in runs]
        axis.bar(positions, [min(max(share, low), high) for share in shares], width, label=f"{name} (≤ {limit:g})")
        for position, share, run in zip(positions, shares, runs, strict=True):
            if not low <= share <= high:  # its figure, written along the bar from the cut end
                end, align = (high * 0.98, "top") if share > high else (low * 0.98, "bottom")
                axis.annotate(
                    f"{run[field]:,.0f}", (position, end), ha="center", va=align, rotation=90, fontsize=7, color="white"
                )
    axis.axhline(1.0, color="black", linestyle="--", linewidth=1)
    axis.axhline(0.0, color="grey", linewidth=0.5)
    axis.set_xticks(range(len(runs)), names)
    axis.set_ylim(min(0.0, axis.get_ylim()[0]), high * 1.25)
    axis.set_title(f"Per message: figure / budget (target ≤ 1; cut at {low:g} and {high:g}, the figure written in)")
    axis.tick_params(axis="x", labelsize=8)
    axis.legend(fontsize=7, ncols=len(fields), loc="upper center")


def io_panel(axis: Any, names: list[str], runs: list[dict[str, Any]]) -> None:
    _, _, target, _ = BUDGETS["io_msgs_per_s"]
    values = [run.get("io_msgs_per_s") or 0.0 for run in runs]
    axis.bar(names, values, color=["tab:green" if value >= target else "tab:red" for value in values])
    axis.axhline(target, color="black", linestyle="--", linewidth=1)
    axis.axhline(IO_IDEAL_MSGS_PER_S, color="grey", linestyle=":", linewidth=1)
    axis.set_ylim(0, max([IO_IDEAL_MSGS_PER_S, *values]) * 1.1)
    axis.set_title(f"I/O-bound msg/s (target ≥ {target:g}, ideal {IO_IDEAL_MSGS_PER_S:g})")
    axis.tick_params(axis="x", labelsize=8)
    for index, value in enumerate(values):
        axis.annotate(f"{value:.0f}", (index, value), ha="center", va="bottom", fontsize=8)
