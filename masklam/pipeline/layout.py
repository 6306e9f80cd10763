"""The layout of a `masklam run` folder: the grid of runs a recipe expands into, where each run's files go, and
the ledger of finished steps. Plain data and paths: `masklam run` writes this layout, `masklam report` reads
it, and reading it imports no training or simulation code (no torch, no MuJoCo).

    RUN/recipe.json                   the recipe as run (with its overrides)
    RUN/steps.json                    finished steps: their settings and wall time (the ledger)
    RUN/data/<variant>/               the datasets (with their extra mask sources)
    RUN/data/<variant>/compare/       each extra mask source scored against the oracle (masks compare)
    RUN/runs/<variant>/<run>/seed<s>/ LAM, probe.json, bc, decoder, evaluate.json (labels-<n>/ per budget)
    RUN/report/                       results.md, results.json, plots
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from masklam.configs import apply_overrides, read_toml
from masklam.data.schema import ORACLE
from masklam.methods import uses_masks
from masklam.train.presets import trainer_file

if TYPE_CHECKING:
    from masklam.pipeline.recipe import Recipe

LEDGER = "steps.json"
# Files of a run folder that every label budget's decoder shares (linked into labels-<n>/).
REFERENCE_FILES = ("bc-actions.pt", "bc-actions-config.json")  # BC on true actions, as a run folder holds it
SHARED = ("lam.pt", "lam-config.json", "bc.pt", "bc-config.json", *REFERENCE_FILES)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: a LAM trained on one dataset with one method, mask source, sweep point and seed."""

    variant: str
    method: str
    mask: str | None  # masked methods only
    sweep: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def label(self) -> str:
        """The run's name in tables: method, then what sets it apart from the others."""
        parts = [self.method]
        if self.mask is not None and self.mask != ORACLE:
            parts.append(f"[{self.mask}]")
        parts += [f"{key.split('.')[-1]}={value}" for key, value in self.sweep]
        return " ".join(parts)

    @property
    def folder_name(self) -> str:
        parts = [self.method]
        if self.mask is not None and self.mask != ORACLE:
            parts.append(self.mask)
        parts += [f"{key.split('.')[-1]}{value}" for key, value in self.sweep]
        return "-".join(str(p) for p in parts)

    def folder(self, root: Path) -> Path:
        return root / "runs" / self.variant / self.folder_name / f"seed{self.seed}"


def grid(recipe: Recipe) -> list[RunSpec]:
    runs = []
    for variant in recipe.datasets():
        for method in recipe.methods:
            for point in recipe.sweep_points():
                sweep = tuple(sorted(point.items()))
                for mask in recipe.masks if trainer_uses_masks(recipe, method, point) else [None]:
                    runs += [RunSpec(variant, method, mask, sweep, seed) for seed in recipe.seeds]
    return runs


def trainer_uses_masks(recipe: Recipe, method: str, point: dict[str, Any]) -> bool:
    """Whether a method's LAM, as the recipe sets it up at one sweep point, reads agent masks: from the trainer
    preset's settings as data (`masklam run` builds and checks the whole config when it plans the steps)."""
    settings = apply_overrides(read_toml(trainer_file(recipe.trainer(method))), [*recipe.lam_overrides(method), *overrides_of(point)])
    model = settings.get("model")
    return uses_masks(settings.get("method", method), model if isinstance(model, dict) else {})


def overrides_of(settings: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]


def budget_folder(recipe: Recipe, run: Path, budget: int) -> Path:
    """Where a label budget's decoder and evaluation go: the run folder itself when there is one budget."""
    return run if len(recipe.labels) == 1 else run / f"labels-{budget}"


def link_shared(run: Path, target: Path) -> None:
    """A label budget's folder sees its run's LAM and policies."""
    if target != run:
        link_files(run, target, SHARED)


def link_files(source_folder: Path, target: Path, names: Iterable[str]) -> None:
    """``names`` of ``source_folder`` seen in ``target`` (hard links; copies across file systems). Writers
    replace files rather than rewrite them, so a source written again later leaves the link as it was."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        source, link = source_folder / name, target / name
        if not source.exists():
            continue
        link.unlink(missing_ok=True)
        try:
            os.link(source, link)
        except OSError:
            shutil.copy2(source, link)


def mask_comparison(root: Path, variant: str, source: str) -> Path:
    """Where `masklam run` stores ``source``'s IoU / precision / recall against the oracle (`masks compare`'s JSON)."""
    return root / "data" / variant / "compare" / f"compare-{source}-vs-{ORACLE}.json"


def read_ledger(root: Path) -> dict[str, Any]:
    from masklam.data.dataset import read_json

    path = root / LEDGER
    return read_json(path, "delete it to rerun every step (finished training stages resume from their checkpoints)") if path.exists() else {}
