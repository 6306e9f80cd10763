"""Experiment recipes (masklam/recipes/*.toml): what to collect, which masks to make, which methods to train with
which settings and seeds, and how to score them. Validated here, at the edge, before anything runs.

A recipe expands into a grid of runs:

    variants (datasets) x methods x mask sources (masked methods only) x sweep values x seeds

and each run's decoder is trained once per label budget. See docs/pipelines.md for every field.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from masklam.configs import apply_overrides, build, read_toml
from masklam.data.collect import CollectSettings
from masklam.data.ingest import IngestConfig
from masklam.data.schema import ORACLE
from masklam.errors import UsageError, did_you_mean
from masklam.methods import METHOD_OPTIONS as METHODS
from masklam.packaged import RECIPES
from masklam.segment.transforms import MaskTransform


def check_folder_name(name: str, what: str, names: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UsageError(f"{what} {name!r}: use letters, digits, '-', '_' and '.' (it names {names})")


@dataclass(frozen=True)
class TrainSettings:
    preset: str = "small"  # masklam/trainers/<method>-<preset>.toml
    lam: list[str] = field(default_factory=list)  # LAM overrides, as --set: "optim.steps=2000"
    # LAM overrides of one method only, after ``lam``: {"laom-labels" = ["model.action_weight=1.0"]}
    lam_per_method: dict[str, list[str]] = field(default_factory=dict)
    stages: list[str] = field(default_factory=list)  # latent BC / decoder / BC-on-actions overrides, as --stage-set
    reference: bool = True  # train BC on true actions, the reference of normalised returns
    device: str = "auto"  # every stage of every run (masklam/devices.py): auto = CUDA when torch sees a GPU
    probe_at: list[int] = field(default_factory=list)  # LAM steps to keep and probe besides the last (learning curves)


@dataclass(frozen=True)
class EvalSettings:
    probe_windows: int = 20000  # train windows the probes fit on (a quarter as many test windows)
    episodes: int = 10  # online evaluation episodes
    steps: int | None = None  # steps per evaluation episode (default: the dataset's episode length)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.probe_windows < 1 or self.episodes < 1:
            raise UsageError("evaluate.probe_windows and evaluate.episodes must be at least 1")


INGESTED = "ingested"  # the dataset of a recipe that starts from [ingest] without variants


@dataclass(frozen=True)
class Recipe:
    name: str
    collect: CollectSettings | None = None
    description: str = ""
    # Or the data: [ingest] takes `masklam ingest`'s options (source, size, fps, camera, test_episodes, ...).
    # Such a dataset has no simulator: no oracle masks, and no online evaluation (see docs/ingest.md).
    ingest: IngestConfig | None = None
    # Datasets: each variant is [collect] (or [ingest]) with some settings changed, e.g. clean = {distractors = "none"}.
    # None: one dataset, named after its distractor preset (or "ingested").
    variants: dict[str, dict[str, Any]] | None = None
    # Mask sources to make before training: [[segment]] tables take `masklam segment`'s option names
    # (model, checkpoint, name, point, box, prompt, distill, propagate, ...), [[transforms]] tables
    # `masklam masks transform`'s (from, erode, dilate, drop, occlude, seed, name).
    segment: list[dict[str, Any]] = field(default_factory=list)
    transforms: list[dict[str, Any]] = field(default_factory=list)
    masks: list[str] = field(default_factory=lambda: [ORACLE])  # sources masked methods train with, one run each
    methods: list[str] = field(default_factory=lambda: ["lapo", "laom", "laom-labels", "masklam"])
    seeds: list[int] = field(default_factory=lambda: [0])
    labels: list[int] = field(default_factory=lambda: [0])  # decoder label budgets in transitions (0 = every labelled one)
    sweep: dict[str, list[Any]] = field(default_factory=dict)  # LAM setting -> values, e.g. "model.latent_dim" = [32, 128]
    train: TrainSettings = field(default_factory=TrainSettings)
    evaluate: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        check_folder_name(self.name, "recipe name", "the run folder")
        if (self.collect is None) == (self.ingest is None):
            raise UsageError("a recipe needs exactly one of [collect] (simulated data) and [ingest] (your videos or a LeRobot dataset)")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise UsageError(f"recipe methods {unknown or '[]'}{did_you_mean(unknown[0], METHODS) if unknown else ''}: choose from {', '.join(METHODS)}")
        if not self.seeds or not self.labels or any(b < 0 for b in self.labels) or not self.masks:
            raise UsageError("recipe seeds, labels and masks need at least one entry each; label budgets are >= 0")
        for name, settings in self.datasets().items():
            config = settings.config()  # validates the environment, distractors, label counts, ...
            check_folder_name(name, "variant name", "a dataset folder")
            if self.simulated:
                self.check_labels(name, config)
        strangers = sorted(set(self.train.lam_per_method) - set(self.methods))
        if strangers:
            raise UsageError(f"train.lam_per_method has settings for {strangers}, not in the recipe's methods {self.methods}")
        for key, values in self.sweep.items():
            if not isinstance(values, list) or not values:
                raise UsageError(f"sweep.{key} must be a non-empty list of values")
        # Building each [[segment]] and [[transforms]] entry validates it.
        made = (
            ({ORACLE} if self.simulated else set())
            | {self.segment_config(e, "-").source for e in self.segment}
            | {self.transform(e)[1] for e in self.transforms}
        )
        missing = [m for m in self.masks if m not in made]
        if missing:
            oracle = "oracle exists for [collect] data" if self.simulated else "[ingest] data has no oracle: segment it with --point/--box prompts"
            raise UsageError(f"recipe masks {missing} are made by no [[segment]] or [[transforms]] entry ({oracle})")

    @property
    def simulated(self) -> bool:
        """Whether the data comes from a simulator ([collect]); else it is ingested and nothing can be evaluated online."""
        return self.collect is not None

    def check_labels(self, variant: str, config) -> None:
        """Every run's decoder (and laom-labels, and the BC-on-actions reference) trains on labelled transitions:
        refuse, before anything runs, a dataset that will have none or fewer than a label budget asks for."""
        from masklam.data.collect import labelled_train_episodes

        episodes = len(labelled_train_episodes(config))
        if episodes == 0:
            raise UsageError(
                f"variant {variant!r} has no labelled train episodes, and every run's action decoder trains on "
                "labelled transitions: set collect.labelled_episodes (or label_fraction) above 0"
            )
        most = episodes * (config.env.episode_steps or suite_steps(config.env.env_id))  # episodes never end early
        over = [budget for budget in self.labels if budget > most]
        if over:
            raise UsageError(
                f"labels {over}: variant {variant!r} will have at most {most} labelled train transitions "
                f"({episodes} labelled episodes): lower the budgets or collect more labelled episodes"
            )

    def datasets(self) -> dict[str, CollectSettings | IngestConfig]:
        """Variant name -> its collect (or ingest) settings."""
        base = self.collect if self.simulated else self.ingest
        if not self.variants:
            return {self.collect.distractors if self.simulated else INGESTED: base}
        return {name: build(type(base), {**asdict(base), **changes}, f"variants.{name}") for name, changes in self.variants.items()}

    def segment_config(self, entry: dict[str, Any], data: str):
        """An entry's segment settings; its device is the run's ([train] device) unless the entry names one."""
        from masklam.segment.run import SegmentConfig

        try:
            return SegmentConfig.from_options(data, **{"device": self.train.device, **entry})
        except TypeError as error:
            raise UsageError(f"recipe [[segment]] entry {entry}: {error}") from None

    @staticmethod
    def transform(entry: dict[str, Any]) -> tuple[MaskTransform, str, str]:
        """(transform, name of the derived source, the source it is derived from)."""
        settings = dict(entry)
        source, name = settings.pop("from", ORACLE), settings.pop("name", None)
        transform = build(MaskTransform, settings, "transforms")
        return transform, name or transform.default_name(source), source

    def trainer(self, method: str) -> str:
        return f"{method}-{self.train.preset}"

    def lam_overrides(self, method: str) -> list[str]:
        """The LAM settings of ``method``'s runs: train.lam, then its own train.lam_per_method."""
        return [*self.train.lam, *self.train.lam_per_method.get(method, [])]

    def sweep_points(self) -> list[dict[str, Any]]:
        """Every combination of the sweep's values ([{}] without a sweep)."""
        keys = sorted(self.sweep)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.sweep[k] for k in keys))]


def suite_steps(env_id: str) -> int:
    """A suite's own episode length (collect's --steps 0)."""
    from masklam.envs.suites import SUITE_STEPS

    return SUITE_STEPS["metaworld" if env_id.startswith("metaworld:") else "dmc"]


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """A recipe file (or the name of one shipped in masklam/recipes/), with command-line overrides (--set key=value)."""
    path = Path(path)
    if not path.exists() and (RECIPES / f"{path.name}.toml").exists():
        path = RECIPES / f"{path.name}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.toml")))
        hint = did_you_mean(path.stem, [p.stem for p in RECIPES.glob("*.toml")])
        raise UsageError(f"no recipe file {path}{hint}: pass a TOML file or the name of a shipped recipe ({known})")
    data = apply_overrides(read_toml(path), list(overrides))
    data.setdefault("name", path.stem)
    for section, settings in (("collect", CollectSettings), ("ingest", IngestConfig)):
        if isinstance(data.get(section), dict):  # built alone first: an optional section's errors would read "wrong type"
            build(settings, data[section], section)
    return build(Recipe, data, "recipe")


def recipe_json(recipe: Recipe) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(recipe)))
