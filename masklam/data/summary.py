"""`masklam info`: what a dataset holds, read from its info.json and shard indexes."""

from __future__ import annotations

from typing import Any

import numpy as np

from masklam.data.dataset import Dataset
from masklam.data.schema import SPLITS


def summarize(dataset: Dataset) -> dict[str, Any]:
    info = dataset.info
    splits = {}
    for split in [split for split in SPLITS if split in info["splits"]]:  # a dataset may have no test split
        records = dataset.index(split)
        episodes = {r.episode: r for r in records}
        returns = np.array([r.episode_return for r in episodes.values()], dtype=np.float64)
        entry: dict[str, Any] = {
            "episodes": len(episodes),
            "records": len(records),
            "frames": int(sum(r.episode_frames for r in episodes.values())),
            "labelled_episodes": int(sum(r.labelled for r in episodes.values())),
            "return_mean": float(returns.mean()) if len(returns) else None,
            "return_std": float(returns.std()) if len(returns) else None,
            "return_min": float(returns.min()) if len(returns) else None,
            "return_max": float(returns.max()) if len(returns) else None,
        }
        successes = [r.extra["success"] for r in episodes.values() if "success" in r.extra]
        if successes:
            entry["success_rate"] = float(np.mean(successes))
        splits[split] = entry
    return {
        "path": str(dataset.root),
        "env": info["env"]["env_id"],
        "backend": info["backend"],
        "image_size": info["env"]["render"]["size"],
        "distractors": info["env"]["distractors"],
        "fps": info["fps"],
        "splits": splits,
        "mask_sources": {name: source.get("coverage") for name, source in info["mask_sources"].items()},
        "action_var_mean": info.get("action_stats", {}).get("var_mean"),
        "bytes_on_disk": dataset.bytes_on_disk(),
        # Ingested data: no simulator, so no distractor settings and no returns; where it came from instead.
        "simulator": info.get("simulator", True),
        "source": info.get("source"),
    }


def _human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1024
    return str(count)


def variance_line(variance: float | None, labelled: bool) -> str:
    if not labelled:
        return "Var(a)      - (no labelled actions)"
    if variance is None:
        return "Var(a)      - (info.json has no action_stats)"
    return f"Var(a)      {variance:.4f} (mean per-dimension action variance, train)"


def render_summary(summary: dict[str, Any]) -> str:
    """A plain-text table (no colour codes, so it pastes into issues and logs)."""
    distractors = summary["distractors"]
    active = [
        name
        for name, on in (
            ("background", distractors["background"]),
            (f"camera {distractors['camera_scale']}", distractors["camera_scale"]),
            (f"colour {distractors['color_scale']}", distractors["color_scale"]),
            (f"{distractors['objects']} objects", distractors["objects"]),
        )
        if on
    ]
    simulated = summary.get("simulator", True)
    source = summary.get("source") or {}
    labelled = any(entry["labelled_episodes"] for entry in summary["splits"].values())
    lines = [
        f"dataset     {summary['path']}",
        f"env         {summary['env']}  ({summary['image_size']} px, {summary['fps']:g} fps)",
        f"distractors {', '.join(active) or 'none'}" + (f"  (videos: {distractors['videos']})" if distractors["background"] else "")
        if simulated
        else f"source      {source.get('kind', '?')} {source.get('path', '')}  (ingested: no simulator, so no oracle masks and no returns)",
        f"backend     {summary['backend']}, {_human_bytes(summary['bytes_on_disk'])} on disk",
        "masks       "
        + (
            ", ".join(f"{name} (coverage {cov:.1%})" if cov is not None else name for name, cov in summary["mask_sources"].items())
            or "none yet (masklam segment)"
        ),
        variance_line(summary["action_var_mean"], labelled),
        "",
        f"{'split':<6} {'episodes':>8} {'labelled':>8} {'frames':>9}" + ("  return mean ± std [min, max]" if simulated else ""),
    ]
    for split, entry in summary["splits"].items():
        if entry["episodes"] == 0:
            lines.append(f"{split:<6} {0:>8} {0:>8} {0:>9}" + ("  -" if simulated else ""))
            continue
        line = f"{split:<6} {entry['episodes']:>8} {entry['labelled_episodes']:>8} {entry['frames']:>9}"
        if simulated:
            line += f"  {entry['return_mean']:.1f} ± {entry['return_std']:.1f} [{entry['return_min']:.1f}, {entry['return_max']:.1f}]"
        if "success_rate" in entry:
            line += f"  success {entry['success_rate']:.0%}"
        lines.append(line)
    return "\n".join(lines)
