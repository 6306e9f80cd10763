"""`masklam report RUN... --out DIR`: one markdown table per environment (dataset variant) x method, from
the probe.json and evaluate.json files of `masklam run` folders, with ratios against LAPO, and plots.

Numbers are means with 95 % percentile-bootstrap intervals, "mean [low, high]", that resample what varies:
the training seeds and, where the run files hold them (probe version 3, evaluate.json's returns), the test
episodes (probe NMSE) or the rollouts (returns), both at once (10,000 resamples, seeded; seeds and episodes
each drawn with replacement, the spirit of rliable's stratified bootstrap). Each table says how many of each
its intervals resampled. Over seeds alone (older files, and every other column) the percentile interval of 3
values is their min and max, which holds the median 75 % of the time (1 - 2 / 2^3): read it as a range, not as 95 %.
Comparisons with LAPO are paired (the same seeds, the same test episodes and rollout seeds): the ratio of the
means with a bootstrap interval of that ratio (the same draws for both rows), and the two-sided p of an exact
sign-flip permutation test over the seeds' paired differences (the seed is the unit that repeats a run: with
n seeds no p falls below 2 / 2^n, 0.25 for 3, 0.0625 for 5). p-values are not corrected for the number of
comparisons in a table (with k of them, Bonferroni asks p < 0.05 / k). Columns:

- probe NMSE, test: the cross-validated linear action probe's normalised MSE on the test split (held-out
  seeds and background videos; lower is better; 1.0 = the mean action);
- probe NMSE, in-pool: the same probe scored on held-out train episodes (same background pool);
- R² of each distractor state that means the same in every episode (camera, colour, objects): how much of it
  the latent gives away to an in-pool linear probe, 1 - NMSE unclipped (below 0: nothing, and worse than the
  state's mean); lower is better; a state that does not vary is left out; no column for a background-only
  dataset (the background has no such state). Older probe files give their mean as one column;
- episode share: the share of the latent's variance that lies between train episodes (per-episode means,
  each dimension counting by its variance), where the distractors are drawn per episode and the actions
  hardly differ (the action's own share is given with the table): lower is better;
- return / expert, return / BC: online return of the decoded latent policy over the return of the policy
  that collected the data (the expert), and over BC trained on every labelled true action (LAOM's
  reference); Meta-World adds the success rate;
- LAPO NMSE / NMSE and return / LAPO's: how many times lower the test NMSE and higher the return are than
  LAPO's (ratios of the means), with the ratio's interval and the permutation p.

Where the runs have action scores (action-scores.json, masklam/eval/offline.py), a second table per variant
gives each link of the decoded policy's error on recorded frames, intervals over seeds.
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
from masklam.eval.outputs import ACTION_SCORE_LINKS, ACTION_SCORES, probe_file
from masklam.locks import writer_lock

BASELINE = "lapo"
CONFIDENCE = 0.95
RESAMPLES = 10_000
METRICS = ("nmse", "in_pool", "distractor", "episode_share", "by_expert", "by_bc", "success", "return")
# Per seed, the values behind a metric's mean, one per test episode or rollout: what the intervals resample too.
PER_EPISODE = {"nmse": "test episodes", "by_expert": "rollouts"}


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


def episode_grid(per_seed: list[dict[str, float] | None]) -> np.ndarray | None:
    """(seeds, episodes) of per-episode values when every seed has them for the same episodes; else None."""
    if not per_seed or any(not values for values in per_seed):
        return None
    keys = sorted(per_seed[0])
    if any(sorted(values) != keys for values in per_seed):
        return None
    return np.array([[values[k] for k in keys] for values in per_seed], np.float64)


def resamples(seeds: int, episodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded draws, with replacement, of seed and episode indices (RESAMPLES rows each)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, seeds, (RESAMPLES, seeds)), rng.integers(0, episodes, (RESAMPLES, episodes))


def grid_means(grid: np.ndarray) -> np.ndarray:
    """The mean of each resampled grid: seeds and episodes drawn independently."""
    seeds, episodes = resamples(*grid.shape)
    return grid[seeds[:, :, None], episodes[:, None, :]].mean(axis=(1, 2))


def grid_ci(grid: np.ndarray) -> tuple[float, float, float]:
    mean = float(grid.mean())
    if grid.size == 1 or np.ptp(grid) == 0:
        return mean, mean, mean
    low, high = np.percentile(grid_means(grid), [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return mean, float(low), float(high)


def paired_ratio(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float, float] | None:
    """Ratio of two grids' means (the same seeds and episodes) and its interval, both resampled alike."""
    if numerator.shape != denominator.shape or denominator.mean() == 0:
        return None
    ratio = float(numerator.mean() / denominator.mean())
    draws = grid_means(numerator) / grid_means(denominator)
    low, high = np.nanpercentile(draws, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return ratio, float(low), float(high)


def sign_flip_p(first: np.ndarray, second: np.ndarray) -> float | None:
    """Two-sided p of an exact paired sign-flip permutation test over seeds (rows), each seed's difference
    averaged over its episodes; None with fewer than 2 seeds."""
    import itertools

    differences = first.mean(axis=1) - second.mean(axis=1)
    if len(differences) < 2:
        return None
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(differences))))
    flipped = np.abs((signs * differences).mean(axis=1))
    return float(np.mean(flipped >= abs(differences.mean()) - 1e-12))


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
            "curves": defaultdict(lambda: defaultdict(list)),  # label -> step -> the seeds' test NMSE
        }
    for run in grid(recipe):
        folder = run.folder(root)
        probe = read_output(folder / "probe.json")
        for path in [folder / probe_file(at) for at in (*recipe.train.probe_at, None)]:  # the recipe's points, the last model too
            point = read_output(path)
            if point is not None and point.get("step") is not None:
                variants[run.variant]["curves"][run.label][int(point["step"])].append(point["action_nmse"])
        for budget in recipe.labels:
            evaluation = read_output(budget_folder(recipe, folder, budget) / "evaluate.json")
            scores = read_output(budget_folder(recipe, folder, budget) / ACTION_SCORES)
            cell = variants[run.variant]["runs"][run.label].setdefault(
                budget,
                {
                    "method": run.method,
                    "mask": run.mask,
                    "seeds": [],
                    "states": [],
                    "action_scores": [],
                    **{key: [] for key in METRICS},
                    **{f"{key}_by_episode": [] for key in PER_EPISODE},
                },
            )
            if probe is None and evaluation is None and scores is None:
                continue
            cell["seeds"].append(run.seed)
            cell["action_scores"].append(scores)
            if probe is not None:
                cell["nmse"].append(probe["action_nmse"])
                cell["in_pool"].append(probe.get("in_pool_nmse"))  # absent from the first probe's files
                cell["distractor"].append(probe.get("distractor_r2"))
                cell["episode_share"].append(probe.get("episode_share", {}).get("latent"))
                cell["nmse_by_episode"].append(probe.get("action", {}).get("test_nmse_per_episode"))
                # Per distractor state (probe version 3: unclipped, None for a state that did not vary).
                cell["states"].append({name: d.get("r2") for name, d in probe.get("distractor", {}).items()} if probe.get("probe_version", 0) >= 3 else None)
                variant_info = variants[run.variant]
                variant_info["action_share"] = variant_info.get("action_share") or probe.get("episode_share", {}).get("action")
            if evaluation is not None:
                cell["return"].append(evaluation["return_mean"])
                cell["by_expert"].append(evaluation["normalised_by_collector"])
                reference = evaluation.get("collector_return")
                returns = evaluation.get("returns")
                cell["by_expert_by_episode"].append({f"{i:04d}": r / reference for i, r in enumerate(returns)} if returns and reference else None)
                cell["by_bc"].append(evaluation["normalised_by_bc_actions"])
                cell["success"].append(evaluation.get("success_rate"))
    return {"root": str(root), "recipe": recipe.name, "labels": list(recipe.labels), "masks": list(recipe.masks), "variants": variants}


def curve_table(curves: dict[str, dict[int, list[float]]]) -> tuple[str, dict[str, dict[int, Any]]] | None:
    """Probe NMSE (test) against the LAM's training steps: a row per run label, a column per step probed; None
    unless some run was probed at more than one step (`[train] probe_at`)."""
    if not any(len(points) > 1 for points in curves.values()):
        return None
    steps = sorted({step for points in curves.values() for step in points})
    stats = {label: {step: mean_ci(points[step]) for step in sorted(points)} for label, points in curves.items()}
    seeds = {label: max(len(values) for values in points.values()) for label, points in curves.items()}
    lines = ["| method | seeds | " + " | ".join(f"step {step}" for step in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for label, row in stats.items():
        lines.append(f"| {label} | {seeds[label]} | " + " | ".join(fmt(row.get(step)) for step in steps) + " |")
    return "\n".join(lines), stats


# The links `masklam score-actions` scores on recorded frames (masklam/eval/offline.py), as the table shows them.
ACTION_SCORE_COLUMNS = (
    ("test", "decoder_on_lam_latent", "decoder on the LAM's latent, test ↓"),
    ("test", "latent_bc", "latent BC, test ↓"),
    ("test", "decoded_policy", "decoded policy, test ↓"),
    ("in_pool", "decoded_policy", "decoded policy, in-pool ↓"),
    ("test", "bc_actions", "BC on true actions, test ↓"),
)


def action_score_table(variant: dict[str, Any], budget: int) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """Where the decoded policy loses, on recorded frames: a row per run label, each link's error over its seeds
    (mean and interval); None when no run has action scores."""
    rows = {}
    for label, cells in variant["runs"].items():
        per_seed = [scores for scores in cells.get(budget, {}).get("action_scores", []) if scores is not None]
        if per_seed:
            stats = {
                f"{split}:{link}": mean_ci([(scores.get(split) or {}).get(link) for scores in per_seed])
                for split in ("test", "in_pool")
                for link in ACTION_SCORE_LINKS
            }
            rows[label] = {"n": len(per_seed), **stats}
    if not rows:
        return None
    header = ["method", "seeds"] + [title for _, _, title in ACTION_SCORE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        lines.append(f"| {label} | {row['n']} | " + " | ".join(fmt(row[f"{split}:{link}"]) for split, link, _ in ACTION_SCORE_COLUMNS) + " |")
    return "\n".join(lines), rows


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
    """A row: each metric's (mean, low, high), its interval resampling seeds x episodes where every seed has the
    same episodes' values (``resampled`` says what was resampled), the seeds alone otherwise; each distractor
    state's R² over seeds."""
    row = {key: mean_ci(cell[key]) for key in METRICS} | {"method": cell["method"], "mask": cell["mask"], "n": len(cell["seeds"])}
    row["seeds"] = list(cell["seeds"])
    row["resampled"] = {key: count(sum(v is not None for v in cell[key]), "seed") for key in METRICS}  # seeds with a value
    row["grids"] = {}
    for key, what in PER_EPISODE.items():
        grid = episode_grid(cell.get(f"{key}_by_episode", []))
        if grid is not None and len(grid) == len(cell["seeds"]):
            row[key], row["grids"][key] = grid_ci(grid), grid
            row["resampled"][key] = f"{count(grid.shape[0], 'seed')} × {grid.shape[1]} {what}"
    states = [s for s in cell.get("states", []) if s is not None]
    names = sorted({name for s in states for name, r2 in s.items() if r2 is not None})
    row["states"] = {name: mean_ci([s.get(name) for s in states]) for name in names}
    return row


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def comparison(row: dict[str, Any], baseline: dict[str, Any] | None, key: str, lower_is_better: bool) -> str:
    """How many times better than LAPO, with the paired interval and p where both rows have the same seeds and
    episodes; the ratio of means alone otherwise."""
    if baseline is None or row[key] is None or baseline[key] is None:
        return "—"
    first, second = (baseline, row) if lower_is_better else (row, baseline)
    if second[key][0] == 0:
        return "—"
    grids = first["grids"].get(key), second["grids"].get(key)
    paired = row is not baseline and row["seeds"] == baseline["seeds"] and all(g is not None for g in grids) and grids[0].shape == grids[1].shape
    if not paired:
        return f"{first[key][0] / second[key][0]:.2f}×"
    ratio, low, high = paired_ratio(*grids)
    p = sign_flip_p(*grids)
    return f"{ratio:.2f}× [{low:.2f}, {high:.2f}]" + (f", p {p:.2g}" if p is not None else "")


def fmt(stat: tuple[float, float, float] | None, digits: int = 3, percent: bool = False) -> str:
    """ "mean [low, high]" (the 95 % interval), the mean alone when there is no interval; "—" for no value."""
    if stat is None:
        return "—"
    scale, digits, unit = (100, 0, " %") if percent else (1, digits, "")
    mean, low, high = (scale * v for v in stat)
    if low == high:
        return f"{mean:.{digits}f}{unit}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]{unit}"


def variant_table(variant: dict[str, Any], budget: int, clean: dict[str, Any] | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    """The variant's table; ``clean``: the same recipe's variant without distractors, whose episode shares are
    the baseline shown beside the distracted ones (what the method's latent spreads between episodes anyway)."""
    rows = {label: summarise(cells[budget]) for label, cells in variant["runs"].items() if budget in cells}
    clean_shares = {label: mean_ci(cells[budget]["episode_share"]) for label, cells in clean["runs"].items() if budget in cells} if clean else {}
    baseline = next((row for row in rows.values() if row["method"] == BASELINE), None)
    online = variant.get("simulated", True)
    metaworld = online and variant["env"].startswith("metaworld:")
    ious = variant.get("mask_iou", {})
    scored = any(source != ORACLE for source in ious)  # a column only where some run trained on model masks
    states = sorted({name for row in rows.values() for name in row["states"]})
    mean_only = not states and any(row["distractor"] is not None for row in rows.values())  # older probe files
    header = (
        ["method", "seeds"]
        + (["mask IoU, train / test ↑"] if scored else [])
        + ["probe NMSE, test ↓", "probe NMSE, in-pool ↓"]
        + [f"R² {name} ↓" for name in states]
        + (["distractor R² ↓"] if mean_only else [])
        + ["episode share ↓"]
        + (["episode share, clean data"] if clean_shares else [])
    )
    header += ["return / expert ↑", "return / BC ↑"] if online else []
    header += ["success ↑"] if metaworld else []
    header += ["LAPO NMSE / NMSE"] + (["return / LAPO's"] if online else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        iou = ious.get(row["mask"]) if row["mask"] is not None else None
        shown = " / ".join(f"{iou[split]:.3f}" for split in ("train", "test") if split in iou) if iou else "—"
        cells = [label, str(row["n"])] + ([shown] if scored else [])
        cells += [fmt(row["nmse"]), fmt(row["in_pool"])]
        cells += [fmt(row["states"].get(name)) for name in states]
        cells += [fmt(row["distractor"])] if mean_only else []
        cells += [fmt(row["episode_share"])]
        cells += [fmt(clean_shares.get(label))] if clean_shares else []
        cells += [fmt(row["by_expert"]), fmt(row["by_bc"])] if online else []
        cells += [fmt(row["success"], percent=True)] if metaworld else []
        cells += [comparison(row, baseline, "nmse", lower_is_better=True)]
        cells += [comparison(row, baseline, "by_expert", lower_is_better=False)] if online else []
        lines.append("| " + " | ".join(cells) + " |")
    resampled = sorted(
        {
            f"{what} ({row['resampled'][key]})"
            for row in rows.values()
            for key, what in (("nmse", "probe NMSE, test"), ("by_expert", "returns"))
            if row[key] is not None  # a column with no value resamples nothing
        }
    )
    lines += ["", "Intervals resample " + "; ".join(resampled) + "; every other column its seeds."]
    if variant.get("action_share") is not None:
        lines[-1] += f" The action's own episode share: {variant['action_share']:.3f}."
    if clean_shares:
        lines[-1] += " Episode share, clean data: the same method and seeds on this recipe's variant without distractors."
    return "\n".join(lines), {label: without_grids(row) for label, row in rows.items()}


def clean_variant(variants: dict[str, dict[str, Any]], variant: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's variant of the same env without distractors, for a distracted one; None otherwise."""
    if variant["distractors"] == "none":
        return None
    return next((v for v in variants.values() if v["distractors"] == "none" and v["env"] == variant["env"] and v["size"] == variant["size"]), None)


def without_grids(row: dict[str, Any]) -> dict[str, Any]:
    """A row without the per-episode arrays behind its comparisons (the JSON summary keeps the numbers)."""
    return {key: value for key, value in row.items() if key != "grids"}


def describe_scale(variant: dict[str, Any]) -> str:
    length = variant["episode_steps"] or "the suite's limit of"
    minutes = variant["wall_seconds"] / 60
    return (
        f"{variant['episodes']} train episodes ({variant['transitions'] or '?'} transitions) + {variant['test_episodes']} test episodes of "
        f"{length} steps, {variant['size']} px, model preset `{variant['preset']}`, seeds {variant['seeds']}, "
        f"wall time {minutes:.0f} min"
    )


def write_report(roots: list[Path], out: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    with writer_lock(Path(out), "report"):  # one writer per report folder
        return _write_report(roots, out, echo)


def _write_report(roots: list[Path], out: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    from masklam.report.plots import plot_bars, plot_curves, plot_label_budget, plot_mask_degradation

    results = [collect_results(root) for root in roots]  # bad folders fail before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        "# Results",
        "",
        "Generated by `masklam report` from: " + ", ".join(f"`{r['root']}`" for r in results),
        "",
        (
            "Means with 95 % percentile-bootstrap intervals, mean [low, high], resampling the seeds and, where the run "
            "files hold them, the test episodes or rollouts (each table says how many of each; over 3 seeds alone an "
            "interval is their min and max). Probe NMSE: a ridge probe cross-validated over train episodes, scored on "
            "the test split (held-out seeds and videos) and in-pool (train episodes held out of every stage that learns "
            "from actions); R² of each distractor state: how much of it the latent gives away (in-pool, unclipped, 0 = "
            "nothing; lower is better); episode share: the variance-weighted share of the latent's variance that lies "
            "between train episodes (lower is better); ratios to LAPO: paired, with the ratio's interval and an exact "
            "sign-flip permutation p over seeds (not corrected for the table's number of comparisons); mask IoU: the "
            "run's mask source against the simulator's oracle over every frame of the train and of the test split "
            "(`masks compare`)."
        ),
        "",
    ]
    summary: dict[str, Any] = {}
    for result in results:
        main_budget = max(result["labels"], key=lambda b: float("inf") if b == 0 else b)
        for name, variant in result["variants"].items():
            key = f"{result['recipe']}/{name}"
            table, rows = variant_table(variant, main_budget, clean_variant(result["variants"], variant))
            budget_note = "every labelled transition" if main_budget == 0 else f"{main_budget} labelled transitions"
            sections += [
                f"## {variant['env']}, distractors: {variant['distractors']} (`{key}`)",
                "",
                describe_scale(variant) + f"; the decoder saw {budget_note}.",
                "",
                table,
                "",
            ]
            curves = curve_table(variant["curves"])
            if curves is not None:
                sections += [
                    "Probe NMSE on the test split along the LAM's training (the table above reports the last point; intervals over seeds):",
                    "",
                    curves[0],
                    "",
                ]
            scores = action_score_table(variant, main_budget)
            if scores is not None:
                sections += [
                    "Where the decoded policy loses, on recorded frames (`masklam score-actions`; intervals over seeds): the action "
                    "decoder on the LAM's own latent of each recorded transition, the latent policy's error against that latent "
                    "(over the latent's variance), the decoded policy's action, and BC on true actions, as NMSE against the "
                    "recorded actions (1.0 = the mean action). In-pool, latent BC had trained on those episodes' frames (it reads "
                    "no actions):",
                    "",
                    scores[0],
                    "",
                ]
            summary[key] = {
                "scale": {k: v for k, v in variant.items() if k not in ("runs", "curves")},
                "action_scores": scores[1] if scores else {},
                "curves": {label: {str(step): stat for step, stat in row.items()} for label, row in curves[1].items()} if curves else {},
                "rows": rows,
                "budgets": {
                    str(b): {label: without_grids(summarise(cells[b])) for label, cells in variant["runs"].items() if b in cells} for b in result["labels"]
                },
            }
            stem = key.replace("/", "-")
            pictures = [plot_bars(rows, f"{variant['env']} ({variant['distractors']})", out / f"{stem}-bars.png")]
            if len(result["labels"]) > 1:
                pictures.append(plot_label_budget(summary[key]["budgets"], f"{variant['env']}: label budget", out / f"{stem}-labels.png"))
            if len(result["masks"]) > 1:
                pictures.append(plot_mask_degradation(rows, result["masks"], f"{variant['env']}: mask quality", out / f"{stem}-masks.png"))
            if curves is not None:
                pictures.append(plot_curves(curves[1], f"{variant['env']} ({variant['distractors']}): probe NMSE along training", out / f"{stem}-curves.png"))
            sections += [f"![{p.stem}]({p.name})" for p in pictures] + [""]
    text = "\n".join(sections)
    atomic_write_bytes(out / "results.md", text.encode())
    atomic_write_json(out / "results.json", summary)
    echo(text)
    echo(f"report written to {out}/results.md (tables), results.json and the plots beside them")
    return summary
