"""`masklam report RUN... --out DIR`: one markdown table per environment (dataset variant) x method, from
the probe.json and evaluate.json files of `masklam run` folders, with ratios against LAPO, and plots.

Numbers are means over seeds with 95 % confidence intervals, "mean [low, high]": a percentile bootstrap of
the mean over the seeds (scipy.stats.bootstrap, 10,000 resamples, seeded; for one task this is what rliable's
stratified bootstrap does). With 3 seeds the interval is coarse (near the seeds' min and max); a single seed
shows no interval. Columns:

- probe NMSE, test: the cross-validated linear action probe's normalised MSE on the test split (held-out
  seeds and background videos; lower is better; 1.0 = the mean action);
- probe NMSE, in-pool: the same probe scored on held-out train episodes (same background pool);
- distractor R²: how much of the distractor states that mean the same in every episode (camera, colour,
  objects) the latent gives away to an in-pool linear probe, averaged over them; 0 = none, 1 = all: lower
  is better; none for a background-only dataset (the background has no such state);
- episode share: the share of the latent's variance that lies between train episodes (per-episode means),
  where the distractors are drawn per episode and the actions hardly differ: lower is better;
- return / expert, return / BC: online return of the decoded latent policy over the return of the policy
  that collected the data (the expert), and over BC trained on every labelled true action (LAOM's
  reference); Meta-World adds the success rate;
- LAPO NMSE / NMSE and return / LAPO's: how many times lower the test NMSE and higher the return are than
  LAPO's (ratios of the means).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from masklam.atomic import atomic_write_bytes, atomic_write_json
from masklam.configs import build
from masklam.data.schema import ORACLE
from masklam.errors import UsageError

BASELINE = "lapo"
CONFIDENCE = 0.95
RESAMPLES = 10_000
METRICS = ("nmse", "in_pool", "distractor", "episode_share", "by_expert", "by_bc", "success", "return")


def mean_ci(values: list[float | None]) -> tuple[float, float, float] | None:
    """(mean, low, high): the mean over seeds and its 95 % percentile-bootstrap interval (low = high = the
    value for one seed); None without values."""
    from scipy.stats import bootstrap

    values = np.asarray([v for v in values if v is not None], np.float64)
    if len(values) == 0:
        return None
    mean = float(values.mean())
    if len(values) == 1 or np.ptp(values) == 0:
        return mean, mean, mean
    interval = bootstrap(
        (values,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile", rng=np.random.default_rng(0)
    ).confidence_interval
    return mean, float(interval.low), float(interval.high)


def read_output(path: Path) -> dict[str, Any] | None:
    """A step's JSON output; None when that step has not run yet."""
    from masklam.data.dataset import read_json

    return read_json(path, "delete it and run `masklam run` again to redo its step") if path.exists() else None


def transitions(info: dict[str, Any]) -> int | None:
    train = info.get("splits", {}).get("train")
    return train["frames"] - train["episodes"] if train else None  # an episode of T steps stores T + 1 frames


def collect_results(root: Path) -> dict[str, Any]:
    """Per dataset variant, per run label, per label budget: the seeds' probe and evaluation numbers."""
    from masklam.pipeline.layout import budget_folder, grid, read_ledger
    from masklam.pipeline.recipe import Recipe

    root = Path(root)
    if not (root / "recipe.json").exists():
        raise UsageError(f"{root} is not a `masklam run` folder (no recipe.json): pass the folder `masklam run` wrote")
    recipe = build(Recipe, read_output(root / "recipe.json"), "recipe")
    ledger = read_ledger(root)
    datasets = recipe.datasets()
    variants: dict[str, Any] = {}
    for variant, settings in datasets.items():
        info = read_output(root / "data" / variant / "info.json") or {}
        seconds = sum(entry["seconds"] for step, entry in ledger.items() if f" {variant} " in f" {step} ")
        splits = info.get("splits", {})
        variants[variant] = {  # an [ingest] recipe's data: what its info.json says
            "env": getattr(settings, "env", info.get("env", {}).get("env_id")),
            "distractors": getattr(settings, "distractors", "none"),
            "size": settings.size,
            "episodes": getattr(settings, "episodes", splits.get("train", {}).get("episodes")),
            "test_episodes": settings.test_episodes,
            "transitions": transitions(info),
            "episode_steps": getattr(settings, "steps", 0),
            "preset": recipe.train.preset,
            "seeds": list(recipe.seeds),
            "wall_seconds": round(seconds),
            "simulated": recipe.simulated,  # ingested data has no simulator: no online returns to report
            "mask_iou": {source: mask_iou(root, variant, source) for source in recipe.masks} if recipe.simulated else {},
            "runs": defaultdict(dict),
        }
    for run in grid(recipe):
        folder = run.folder(root)
        probe = read_output(folder / "probe.json")
        for budget in recipe.labels:
            evaluation = read_output(budget_folder(recipe, folder, budget) / "evaluate.json")
            cell = variants[run.variant]["runs"][run.label].setdefault(
                budget, {"method": run.method, "mask": run.mask, "seeds": [], **{key: [] for key in METRICS}}
            )
            if probe is None and evaluation is None:
                continue
            cell["seeds"].append(run.seed)
            if probe is not None:
                cell["nmse"].append(probe["action_nmse"])
                cell["in_pool"].append(probe.get("in_pool_nmse"))  # absent from the first probe's files
                cell["distractor"].append(probe.get("distractor_r2"))
                cell["episode_share"].append(probe.get("episode_share", {}).get("latent"))
            if evaluation is not None:
                cell["return"].append(evaluation["return_mean"])
                cell["by_expert"].append(evaluation["normalised_by_collector"])
                cell["by_bc"].append(evaluation["normalised_by_bc_actions"])
                cell["success"].append(evaluation.get("success_rate"))
    return {"root": str(root), "recipe": recipe.name, "labels": list(recipe.labels), "masks": list(recipe.masks), "variants": variants}


def mask_iou(root: Path, variant: str, source: str) -> dict[str, float] | None:
    """A mask source's IoU against the oracle over every frame of each split (1 for the oracle itself)."""
    from masklam.pipeline.layout import mask_comparison

    if source == ORACLE:
        return {"train": 1.0, "test": 1.0}
    comparison = read_output(mask_comparison(root, variant, source))
    if comparison is None:
        return None
    return {split: scores["iou"] for split, scores in comparison["splits"].items()}


def summarise(cell: dict[str, Any]) -> dict[str, Any]:
    return {key: mean_ci(cell[key]) for key in METRICS} | {"method": cell["method"], "mask": cell["mask"], "n": len(cell["seeds"])}


def fmt(stat: tuple[float, float, float] | None, digits: int = 3, percent: bool = False) -> str:
    """ "mean [low, high]" (the 95 % interval), the mean alone when there is no interval; "—" for no value."""
    if stat is None:
        return "—"
    scale, digits, unit = (100, 0, " %") if percent else (1, digits, "")
    mean, low, high = (scale * v for v in stat)
    if low == high:
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]{unit}"


def ratio(numerator: tuple[float, ...] | None, denominator: tuple[float, ...] | None) -> str:
    if numerator is None or denominator is None or denominator[0] == 0:
        return "—"
    return f"{numerator[0] / denominator[0]:.2f}×"


def variant_table(variant: dict[str, Any], budget: int) -> tuple[str, dict[str, dict[str, Any]]]:
    rows = {label: summarise(cells[budget]) for label, cells in variant["runs"].items() if budget in cells}
    baseline = next((row for row in rows.values() if row["method"] == BASELINE), None)
    online = variant.get("simulated", True)
    metaworld = online and variant["env"].startswith("metaworld:")
    ious = variant.get("mask_iou", {})
    scored = any(source != ORACLE for source in ious)  # a column only where some run trained on model masks
    header = (
        ["method", "seeds"]
        + (["mask IoU, train / test ↑"] if scored else [])
        + ["probe NMSE, test ↓", "probe NMSE, in-pool ↓", "distractor R² ↓", "episode share ↓"]
    )
    header += ["return / expert ↑", "return / BC ↑"] if online else []
    header += ["success ↑"] if metaworld else []
    header += ["LAPO NMSE / NMSE"] + (["return / LAPO's"] if online else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        iou = ious.get(row["mask"]) if row["mask"] is not None else None
        shown = " / ".join(f"{iou[split]:.3f}" for split in ("train", "test") if split in iou) if iou else "—"
        cells = [label, str(row["n"])] + ([shown] if scored else [])
        cells += [
            fmt(row["nmse"]),
            fmt(row["in_pool"]),
            fmt(row["distractor"]),
            fmt(row["episode_share"]),
        ]
        cells += [fmt(row["by_expert"]), fmt(row["by_bc"])] if online else []
        cells += [fmt(row["success"], percent=True)] if metaworld else []
        cells += [ratio(baseline["nmse"], row["nmse"]) if baseline else "—"]
        cells += [ratio(row["by_expert"], baseline["by_expert"]) if baseline else "—"] if online else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def describe_scale(variant: dict[str, Any]) -> str:
    length = variant["episode_steps"] or "the suite's limit of"
    minutes = variant["wall_seconds"] / 60
    return (
        f"{variant['episodes']} train episodes ({variant['transitions'] or '?'} transitions) + {variant['test_episodes']} test episodes of "
        f"{length} steps, {variant['size']} px, model preset `{variant['preset']}`, seeds {variant['seeds']}, "
        f"wall time {minutes:.0f} min"
    )


def write_report(roots: list[Path], out: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    from masklam.report.plots import plot_bars, plot_label_budget, plot_mask_degradation

    results = [collect_results(root) for root in roots]  # bad folders fail before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        "# Results",
        "",
        "Generated by `masklam report` from: " + ", ".join(f"`{r['root']}`" for r in results),
        "",
        (
            "Means over seeds with their 95 % percentile-bootstrap interval, mean [low, high]. Probe NMSE: a ridge probe "
            "cross-validated over train episodes, scored on the test split (held-out seeds and videos) and in-pool "
            "(held-out train episodes); distractor R²: how much of the distractor states the latent gives away "
            "(in-pool, 0 = nothing; lower is better); episode share: the share of the latent's variance that lies "
            "between train episodes (lower is better); mask IoU: the run's mask source against the simulator's oracle "
            "over every frame of the train and of the test split (`masks compare`)."
        ),
        "",
    ]
    summary: dict[str, Any] = {}
    for result in results:
        main_budget = max(result["labels"], key=lambda b: float("inf") if b == 0 else b)
        for name, variant in result["variants"].items():
            key = f"{result['recipe']}/{name}"
            table, rows = variant_table(variant, main_budget)
            budget_note = "every labelled transition" if main_budget == 0 else f"{main_budget} labelled transitions"
            sections += [
                f"## {variant['env']}, distractors: {variant['distractors']} (`{key}`)",
                "",
                describe_scale(variant) + f"; the decoder saw {budget_note}.",
                "",
                table,
                "",
            ]
            summary[key] = {
                "scale": {k: v for k, v in variant.items() if k != "runs"},
                "rows": rows,
                "budgets": {str(b): {label: summarise(cells[b]) for label, cells in variant["runs"].items() if b in cells} for b in result["labels"]},
            }
            stem = key.replace("/", "-")
            pictures = [plot_bars(rows, f"{variant['env']} ({variant['distractors']})", out / f"{stem}-bars.png")]
            if len(result["labels"]) > 1:
                pictures.append(plot_label_budget(summary[key]["budgets"], f"{variant['env']}: label budget", out / f"{stem}-labels.png"))
            if len(result["masks"]) > 1:
                pictures.append(plot_mask_degradation(rows, result["masks"], f"{variant['env']}: mask quality", out / f"{stem}-masks.png"))
            sections += [f"![{p.stem}]({p.name})" for p in pictures] + [""]
    text = "\n".join(sections)
    atomic_write_bytes(out / "results.md", text.encode())
    atomic_write_json(out / "results.json", summary)
    echo(text)
    echo(f"report written to {out}/results.md (tables), results.json and the plots beside them")
    return summary
