"""The PostgreSQL benchmark's printed table: every figure, then the headline ratios."""

from __future__ import annotations

from typing import Any

from tests.bench.pg_ceiling import CLIENTS

Rounds = list[dict[str, dict[str, Any]]]


def summarise(rounds: Rounds) -> dict[str, dict[str, dict[str, float]]]:
    """For every run and numeric figure: median, min and max over the rounds that have it."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in rounds[0]:
        figures = {f for r in rounds for f, v in r[name].items() if isinstance(v, int | float)}
        for figure in sorted(figures, key=list(rounds[0][name]).index):
            values = sorted(
                r[name][figure] for r in rounds if isinstance(r[name].get(figure), int | float)
            )
            summary.setdefault(name, {})[figure] = {
                "median": values[len(values) // 2],
                "min": values[0],
                "max": values[-1],
            }
    return summary


def _median(summary: dict[str, Any], run: str, figure: str) -> float | None:
    entry = summary.get(run, {}).get(figure)
    return None if entry is None else float(entry["median"])


def _ratio(
    summary: dict[str, Any], rounds: Rounds, top: tuple[str, str], bottom: tuple[str, str]
) -> str:
    """The ratio of medians, then each round's own ratio (both from the same round)."""
    a, b = _median(summary, *top), _median(summary, *bottom)
    if a is None or not b:
        return "-"
    pairs = [(r[top[0]].get(top[1]), r[bottom[0]].get(bottom[1])) for r in rounds]
    each = [x / y for x, y in pairs if x is not None and y]
    return f"{a / b:.2f}x  (rounds: {' '.join(f'{x:.2f}' for x in each)})"


def _best_serialised(rounds: Rounds, rows: int) -> None:
    """Adds, per round, the best serialised rows/s over the client counts (a ceiling)."""
    for figures in rounds:
        runs = [figures.get(f"pgbench_serialised_{rows}row_{c}c") for c in CLIENTS]
        rates = [run["row_rate"] for run in runs if run]
        if rates:
            figures[f"pgbench_serialised_{rows}row_best"] = {"row_rate": max(rates)}


def table(summary: dict[str, Any], rounds: Rounds, once: dict[str, Any], machine: str) -> str:
    lines = [f"Machine: {machine}; every figure below shares it.", ""]
    lines.append(f"{'run':36} {'figure':16} {'median':>12} {'min':>12} {'max':>12}")
    for run, figures in summary.items():
        for figure, values in figures.items():
            lines.append(
                f"{run:36} {figure:16} {values['median']:12.2f} {values['min']:12.2f} "
                f"{values['max']:12.2f}"
            )
    for run, figures in once.items():
        for figure, value in figures.items():
            shown = f"{value:12.2f}" if isinstance(value, float) else f"{value!s:>12}"
            lines.append(f"{run:36} {figure:16} {shown} (one run)")
    if rounds and "pgbench_serialised_50row_1c" in rounds[0]:
        _best_serialised(rounds, 50)
        summary = dict(summary, pgbench_serialised_50row_best={"row_rate": _best(rounds)})
    lines += ["", f"{'headline ratio':50} median ratio (each round's ratio)"]
    one, two, lite = "ingest_pg_1p", "ingest_pg_2p", "ingest_sqlite_1p"
    ceiling = ("pgbench_serialised_50row_1c", "row_rate")
    for label, top, bottom in (
        ("ingest, 1 PostgreSQL process / SQLite", (one, "rate"), (lite, "rate")),
        ("ingest, 2 PostgreSQL processes / SQLite", (two, "rate"), (lite, "rate")),
        ("ingest, 2 PostgreSQL processes / 1", (two, "rate"), (one, "rate")),
        ("ingest, 1 process / pgbench serialised 50/tx 1c", (one, "rate"), ceiling),
        ("ingest, 2 processes / pgbench serialised 50/tx 1c", (two, "rate"), ceiling),
        (
            "ingest, 2 processes / best serialised 50/tx",
            (two, "rate"),
            ("pgbench_serialised_50row_best", "row_rate"),
        ),
        ("p99, 1 PostgreSQL process / SQLite", (one, "p99_ms"), (lite, "p99_ms")),
    ):
        lines.append(f"{label:50} {_ratio(summary, rounds, top, bottom)}")
    lines += ["", f"{'target':50} {'at most':>8}   figure"]
    lag, failover = "lag_pg_2p", once.get("failover", {})
    for label, value, bound in (
        ("lag p99, read on the folder, ms", _median(summary, lag, "lag_p99_ms_folder"), "1000"),
        ("lag p99, read on the poster, ms", _median(summary, lag, "lag_p99_ms_poster"), "1000"),
        ("failover median, s", failover.get("median_s"), "10"),
        ("failover max, s", failover.get("max_s"), "10"),
    ):
        shown = "-" if value is None else f"{value:.2f}"
        lines.append(f"{label:50} {bound:>8}   {shown}")
    for name in [n for n in once if n.startswith("rebuild_pg_")]:
        size = name.removeprefix("rebuild_pg_")
        pg, lite_run = once[name], once.get(f"rebuild_sqlite_{size}", {})
        if lite_run:
            lines.append(
                f"{'rebuild ' + size + ', PostgreSQL / SQLite time':50} {'':>8}   "
                f"{pg['seconds']:.1f} s / {lite_run['seconds']:.1f} s = "
                f"{pg['seconds'] / lite_run['seconds']:.2f}x"
            )
    return "\n".join(lines)


def _best(rounds: Rounds) -> dict[str, float]:
    values = sorted(r["pgbench_serialised_50row_best"]["row_rate"] for r in rounds)
    return {"median": values[len(values) // 2], "min": values[0], "max": values[-1]}
