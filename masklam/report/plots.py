"""The report's plots (PNG, written atomically): NMSE and return per method, return against the label
budget, NMSE against mask quality, NMSE along training. Means with error bars spanning their 95 % bootstrap interval (report.tables:
stats are (mean, low, high)); the bar chart's title says what each interval resampled."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from masklam.atomic import atomic_write_bytes  # noqa: E402


def save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return path


Stat = tuple[float, float, float]  # mean, low, high


def means_and_errors(stats: list[Stat | None]) -> tuple[list[float], list[list[float]]]:
    """Means and matplotlib's asymmetric yerr ([below], [above]) of the intervals; missing stats: 0, no bar."""
    means = [s[0] if s else 0.0 for s in stats]
    below = [s[0] - s[1] if s else 0.0 for s in stats]
    above = [s[2] - s[0] if s else 0.0 for s in stats]
    return means, [below, above]


def bars(axis, labels: list[str], series: dict[str, list[Stat | None]], title: str) -> None:
    """One group of bars per run label, one bar per series (one series: coloured by label)."""
    width = 0.8 / len(series)
    for j, (name, stats) in enumerate(series.items()):
        means, errors = means_and_errors(stats)
        offsets = [i + (j - (len(series) - 1) / 2) * width for i in range(len(labels))]
        colours = [f"C{i}" for i in range(len(labels))] if len(series) == 1 else f"C{j}"
        axis.bar(offsets, means, width, yerr=errors, capsize=3, color=colours, label=name if len(series) > 1 else None)
    axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axis.set_title(title, fontsize=10)
    if len(series) > 1:
        axis.legend(fontsize=8)


def plot_bars(rows: dict[str, dict[str, Any]], title: str, path: Path) -> Path:
    """Probe NMSE (test split and in-pool) and return over the expert's, one group of bars per run label."""
    labels = list(rows)
    figure, (left, right) = plt.subplots(1, 2, figsize=(max(7, 1.4 * len(labels) + 3), 3.6))
    nmse = {"test": [rows[label]["nmse"] for label in labels], "in-pool": [rows[label]["in_pool"] for label in labels]}
    bars(left, labels, nmse, "action probe NMSE (lower: better)")
    bars(right, labels, {"return": [rows[label]["by_expert"] for label in labels]}, "return / expert's (higher: better)")
    figure.suptitle(f"{title}: means; whiskers: {whiskers(rows)}", fontsize=9)
    return save(figure, path)


def whiskers(rows: dict[str, dict[str, Any]]) -> str:
    """What the error bars are, by what each metric's interval resampled (one seed alone gives none)."""
    parts = []
    for key, name in (("nmse", "test NMSE"), ("in_pool", "in-pool"), ("by_expert", "return")):
        resampled = sorted({row["resampled"][key] for row in rows.values() if row.get(key) is not None})
        if resampled:
            parts.append(f"{name} " + ("none (1 seed)" if resampled == ["1 seed"] else " / ".join(resampled)))
    return "95 % bootstrap intervals over " + "; ".join(parts)


def plot_label_budget(budgets: dict[str, dict[str, dict[str, Any]]], title: str, path: Path) -> Path:
    """Normalised return against the decoder's label budget, one line per run label (0 = all: drawn last)."""
    order = sorted(budgets, key=lambda b: float("inf") if int(b) == 0 else int(b))
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    labels = sorted({label for rows in budgets.values() for label in rows})
    for label in labels:
        points = [(i, budgets[b][label]["by_expert"]) for i, b in enumerate(order) if label in budgets[b] and budgets[b][label]["by_expert"]]
        if points:
            means, errors = means_and_errors([s for _, s in points])
            axis.errorbar([i for i, _ in points], means, yerr=errors, marker="o", capsize=3, label=label)
    axis.set_xticks(range(len(order)), ["all" if int(b) == 0 else b for b in order])
    axis.set_xlabel("labelled transitions for the decoder")
    axis.set_ylabel("return / expert's")
    axis.set_title(title)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    else:  # a run stopped before its returns (`masklam run --until probe`)
        axis.text(0.5, 0.5, "no returns yet", ha="center", va="center", transform=axis.transAxes)
    return save(figure, path)


def plot_mask_degradation(rows: dict[str, dict[str, Any]], masks: list[str], title: str, path: Path) -> Path:
    """Probe NMSE of the masked runs for each mask source in the recipe's order, unmasked runs as lines."""
    figure, axis = plt.subplots(figsize=(max(5.5, 0.9 * len(masks) + 2), 3.6))
    masked = [row for row in rows.values() if row["mask"] is not None]
    methods = sorted({row["method"] for row in masked})
    for method in methods:
        by_mask = {row["mask"]: row["nmse"] for row in masked if row["method"] == method and row["nmse"]}
        points = [(i, by_mask[mask]) for i, mask in enumerate(masks) if mask in by_mask]
        means, errors = means_and_errors([s for _, s in points])
        axis.errorbar([i for i, _ in points], means, yerr=errors, marker="o", capsize=3, label=method)
    unmasked = [(label, row) for label, row in rows.items() if row["mask"] is None and row["nmse"]]
    for i, (label, row) in enumerate(unmasked):
        axis.axhline(row["nmse"][0], color=f"C{len(methods) + i}", linestyle="--", label=label)
    axis.set_xticks(range(len(masks)), masks, rotation=30, ha="right")
    axis.set_ylabel("action probe NMSE (test)")
    axis.set_title(title)
    axis.legend(fontsize=8)
    return save(figure, path)


def plot_curves(curves: dict[str, dict[int, Stat | None]], title: str, path: Path) -> Path:
    """Probe NMSE (test) against the LAM's training steps, one line per run label, log-scaled steps."""
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    for label, points in curves.items():
        steps = [step for step, stat in sorted(points.items()) if stat]
        means, errors = means_and_errors([points[step] for step in steps])
        axis.errorbar(steps, means, yerr=errors, marker="o", capsize=3, label=label)
    axis.set_xscale("log")
    axis.set_xlabel("LAM training steps")
    axis.set_ylabel("probe NMSE, test")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    return save(figure, path)
