"""`masklam report RUN... --out DIR`: one markdown table per environment (dataset variant) x method, from
the probe.json and evaluate.json files of `masklam run` folders, with ratios against LAPO, and plots.

Numbers are means ± standard deviations over seeds (population std; a single seed shows ± 0). Columns:

- probe NMSE: the linear action probe's normalised MSE (lower is better; 1.0 = the mean action);
- distractor probe: the mean NMSE of linear probes from the latent to each distractor state (higher = the
  latent encodes less of the distractors);
- return / expert, return / BC: online return of the decoded latent policy over the return of the policy
  that collected the data (the expert), and over BC trained on every labelled true action (LAOM's
  reference); Meta-World adds the success rate;
- LAPO / NMSE and return / LAPO: how many times lower the NMSE and higher the return are than LAPO's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from masklam.atomic import atomic_write_bytes, atomic_write_json
from masklam.configs import build
from masklam.errors import UsageError

BASELINE = "lapo"


def mean_std(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else None


def read_output(path: Path) -> dict[str, Any] | None:
    """A step's JSON output; None when that step has not run yet."""
    from masklam.data.dataset import read_json

    return read_json(path, "delete it and run `masklam run` again to redo its step") if path.exists() else None


def transitions(info: dict[str, Any]) -> int | None:
    train = info.get("splits", {}).get("train")
    return train["frames"] - train["episodes"] if train else None  # an episode of T steps stores T + 1 frames


def collect_results(root: Path) -> dict[str, Any]:
    """Per dataset variant, per run label, per label budget: the seeds' probe and evaluation numbers."""
    from masklam.pipeline.recipe import Recipe
    from masklam.pipeline.layout import budget_folder, grid, read_ledger

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
            "env": getattr(settings, "env", info.get("env", {}).get("env_id")), "distractors": getattr(settings, "distractors", "none"),
            "size": settings.size, "episodes": getattr(settings, "episodes", splits.get("train", {}).get("episodes")),
            "test_episodes": settings.test_episodes, "transitions": transitions(info),
            "episode_steps": getattr(settings, "steps", 0), "preset": recipe.train.preset, "seeds": list(recipe.seeds),
            "wall_seconds": round(seconds), "runs": defaultdict(dict),
        }
    for run in grid(recipe):
        folder = run.folder(root)
        probe = read_output(folder / "probe.json")
        for budget in recipe.labels:
            evaluation = read_output(budget_folder(recipe, folder, budget) / "evaluate.json")
            cell = variants[run.variant]["runs"][run.label].setdefault(budget, {"method": run.method, "mask": run.mask, "seeds": [], "nmse": [], "distractor": [], "by_expert": [], "by_bc": [], "success": [], "return": []})
            if probe is None and evaluation is None:
                continue
            cell["seeds"].append(run.seed)
            if probe is not None:
                cell["nmse"].append(probe["action_nmse"])
                distractors = list(probe["distractor_nmse"].values())
                cell["distractor"].append(float(np.mean(distractors)) if distractors else None)
            if evaluation is not None:
                cell["return"].append(evaluation["return_mean"])
                cell["by_expert"].append(evaluation["normalised_by_collector"])
                cell["by_bc"].append(evaluation["normalised_by_bc_actions"])
                cell["success"].append(evaluation.get("success_rate"))
    return {"root": str(root), "recipe": recipe.name, "labels": list(recipe.labels), "masks": list(recipe.masks), "variants": variants}


def summarise(cell: dict[str, Any]) -> dict[str, Any]:
    return {key: mean_std(cell[key]) for key in ("nmse", "distractor", "by_expert", "by_bc", "success", "return")} | {"method": cell["method"], "mask": cell["mask"], "n": len(cell["seeds"])}


def fmt(stat: tuple[float, float] | None, digits: int = 3, percent: bool = False) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{100 * mean:.0f} ± {100 * std:.0f} %" if percent else f"{mean:.{digits}f} ± {std:.{digits}f}"


def ratio(numerator: tuple[float, float] | None, denominator: tuple[float, float] | None) -> str:
    if numerator is None or denominator is None or denominator[0] == 0:
        return "—"
    return f"{numerator[0] / denominator[0]:.2f}×"


def variant_table(variant: dict[str, Any], budget: int) -> tuple[str, dict[str, dict[str, Any]]]:
    rows = {label: summarise(cells[budget]) for label, cells in variant["runs"].items() if budget in cells}
    baseline = next((row for row in rows.values() if row["method"] == BASELINE), None)
    metaworld = variant["env"].startswith("metaworld:")
    header = ["method", "seeds", "probe NMSE ↓", "distractor probe ↑", "return / expert ↑", "return / BC ↑"]
    header += ["success ↑"] if metaworld else []
    header += ["LAPO NMSE / NMSE", "return / LAPO's"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        cells = [label, str(row["n"]), fmt(row["nmse"]), fmt(row["distractor"]), fmt(row["by_expert"]), fmt(row["by_bc"])]
        cells += [fmt(row["success"], percent=True)] if metaworld else []
        cells += [ratio(baseline["nmse"], row["nmse"]) if baseline else "—", ratio(row["by_expert"], baseline["by_expert"]) if baseline else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def describe_scale(variant: dict[str, Any]) -> str:
    length = variant["episode_steps"] or "the suite's limit of"
    minutes = variant["wall_seconds"] / 60
    return (f"{variant['episodes']} train episodes ({variant['transitions'] or '?'} transitions) + {variant['test_episodes']} test episodes of "
            f"{length} steps, {variant['size']} px, model preset `{variant['preset']}`, seeds {variant['seeds']}, "
            f"wall time {minutes:.0f} min")


def write_report(roots: list[Path], out: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    from masklam.report.plots import plot_bars, plot_label_budget, plot_mask_degradation

    results = [collect_results(root) for root in roots]  # bad folders fail before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# Results", "", "Generated by `masklam report` from: " + ", ".join(f"`{r['root']}`" for r in results), ""]
    summary: dict[str, Any] = {}
    for result in results:
        main_budget = max(result["labels"], key=lambda b: float("inf") if b == 0 else b)
        for name, variant in result["variants"].items():
            key = f"{result['recipe']}/{name}"
            table, rows = variant_table(variant, main_budget)
            budget_note = "every labelled transition" if main_budget == 0 else f"{main_budget} labelled transitions"
            sections += [f"## {variant['env']}, distractors: {variant['distractors']} (`{key}`)", "",
                         describe_scale(variant) + f"; the decoder saw {budget_note}.", "", table, ""]
            summary[key] = {"scale": {k: v for k, v in variant.items() if k != "runs"}, "rows": rows,
                            "budgets": {str(b): {label: summarise(cells[b]) for label, cells in variant["runs"].items() if b in cells} for b in result["labels"]}}
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
