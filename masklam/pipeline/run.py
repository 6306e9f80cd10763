"""`masklam run RECIPE`: collect -> segment / derive masks -> for each run: train the LAM, probe it, latent BC,
BC on true actions, then per label budget the action decoder, its action scores on recorded frames and online
evaluation -> report.

Everything goes under one run folder, laid out as masklam/pipeline/layout.py says (what the report reads).

A step is skipped when steps.json holds it with the same settings and its outputs exist, so an interrupted
run resumes where it stopped (each training stage also resumes from its own checkpoint), and changing one
setting reruns only the steps it touches.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from masklam.atomic import atomic_write_json
from masklam.data.schema import ORACLE
from masklam.errors import UsageError
from masklam.pipeline.layout import LEDGER, REFERENCE_FILES, budget_folder, grid, link_files, link_shared, mask_comparison, overrides_of, read_ledger
from masklam.pipeline.recipe import Recipe, recipe_json

# The stages of a recipe in the order each run goes through them; `--until probe` runs every method x seed
# up to its probe (the LAM measures) and leaves BC, the decoder and the returns for a later resume.
STAGES = ("data", "lam", "probe", "bc", "decoder", "evaluate")


@dataclass
class Step:
    id: str
    settings: dict[str, Any]
    outputs: list[Path]
    work: Callable[[], None] = field(repr=False)
    reset: list[Path] = field(default_factory=list)  # deleted first when the step ran before with other settings
    stage: str = "data"  # one of STAGES: what `masklam run --until` stops after

    def fingerprint(self, root: Path | None = None) -> str:
        """A hash of the settings, with the run folder's own path written as $RUN: a moved or copied run folder
        finds its steps done."""
        text = json.dumps(self.settings, sort_keys=True, default=str)
        if root is not None:
            text = text.replace(json.dumps(str(root))[1:-1], "$RUN")
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(recipe: Recipe, root: Path, workers: int = 1, show_progress: bool = True) -> list[Step]:
    """Every step of the recipe, in order."""
    from masklam.configs import to_dict
    from masklam.data.collect import collect
    from masklam.data.ingest import ingest
    from masklam.devices import resolve
    from masklam.eval.offline import ACTION_SCORES_VERSION, score_actions
    from masklam.eval.outputs import ACTION_SCORES, probe_file
    from masklam.eval.probe import PROBE_VERSION, probe_run
    from masklam.eval.rollout import REFERENCE_RETURNS, evaluate_run
    from masklam.segment.compare import compare_sources
    from masklam.segment.run import segment_dataset
    from masklam.segment.transforms import derive_source
    from masklam.train.lam import load_trainer, train_lam
    from masklam.train.loader import LABEL_POLICY
    from masklam.train.loop import check_keep_at, kept_checkpoint, stage_files
    from masklam.train.stages import stage_config, train_action_bc, train_bc, train_decoder

    steps: list[Step] = []
    # The LAM's settings name the device it trained on (cpu here, as before there was a choice); the later
    # stages take it as an argument, outside their settings.
    device = resolve(recipe.train.device)
    datasets = recipe.datasets()
    made_by = {recipe.segment_config(e, "-").source: e for e in recipe.segment} | {recipe.transform(e)[1]: e for e in recipe.transforms}
    for variant, settings in datasets.items():
        data = root / "data" / variant
        config = settings.config()
        if recipe.simulated:
            steps.append(
                Step(
                    f"collect {variant}",
                    config.identity(),
                    [data / "info.json"],
                    lambda config=config, data=data: collect(config, data, workers=workers, show_progress=show_progress),
                )
            )
        else:
            steps.append(
                Step(
                    f"ingest {variant}",
                    config.identity(),
                    [data / "info.json"],
                    lambda config=config, data=data: ingest(config, data, show_progress=show_progress),
                )
            )
        for entry in recipe.segment:
            segment = recipe.segment_config(entry, str(data))
            steps.append(
                Step(
                    f"segment {variant} {segment.source}",
                    {"data": variant, **entry},
                    [data / "info.json"],
                    lambda segment=segment: segment_dataset(segment, show_progress=show_progress),
                )
            )
        for entry in recipe.transforms:
            transform, name, source = recipe.transform(entry)
            steps.append(
                Step(
                    f"masks {variant} {name}",
                    {"data": variant, **entry},
                    [data / "info.json"],
                    lambda t=transform, n=name, s=source, data=data: derive_source(data, s, t, n, show_progress=show_progress),
                )
            )
        for source in recipe.masks if recipe.simulated else ():  # ingested data has no oracle to score against
            if source != ORACLE:
                path = mask_comparison(root, variant, source)
                steps.append(
                    Step(
                        f"compare {variant} {source}",
                        {"data": variant, "source": source, "made_by": made_by.get(source), "scores": ["overall", "per split"]},
                        [path],
                        lambda d=str(data), s=source, p=path: compare_sources(d, ORACLE, s, out=p.parent),
                    )
                )

    e = recipe.evaluate
    checked: set[str] = set()
    reference_owners: dict[str, tuple[Path, dict[str, Any]]] = {}  # BC on true actions: who trains each distinct one
    for run in grid(recipe):
        data, folder = str(root / "data" / run.variant), run.folder(root)
        overrides = [*recipe.lam_overrides(run.method), *overrides_of(dict(run.sweep)), f"seed={run.seed}", f"device={json.dumps(device)}"]
        lam = load_trainer(recipe.trainer(run.method), overrides, data, run.mask)
        stage = stage_config(recipe.train.stages, "train.stages", preset=lam.preset, seed=run.seed)
        check_settings(lam, stage, datasets[run.variant].size, checked)
        name = f"{run.variant} {run.label} seed{run.seed}"
        # Steps that learn from actions carry the label policy: runs made when they read the in-pool episodes' labels re-run.
        labels = {"labels": LABEL_POLICY}
        # Probe points are part of the LAM step only when there are some (runs made before them keep their
        # hash); changing them trains the LAM again from step 0, the only way to keep its earlier models.
        keep_at = check_keep_at(tuple(recipe.train.probe_at), lam.optim.steps)
        kept = [kept_checkpoint(folder, "lam", step) for step in keep_at]
        # What a retrained LAM or latent policy makes stale in this cell: deleted with it, so that a run stopped
        # early (--until) never reports a probe, decoder or return of the model it replaced.
        decoded = [
            path
            for budget in recipe.labels
            for target in [budget_folder(recipe, folder, budget)]
            for path in (*stage_files(target, "decoder"), target / "evaluate.json", target / ACTION_SCORES)
        ]
        probed = [folder / probe_file(at) for at in (None, *keep_at)]
        steps += [
            Step(
                f"train lam {name}",
                {**to_dict(lam), **(labels if lam.method == "laom-labels" else {}), **({"probe_at": list(keep_at)} if keep_at else {})},
                [folder / "lam.pt", *kept],
                lambda lam=lam, f=folder, k=keep_at: train_lam(lam, f, show_progress, keep_at=k),
                [*stage_files(folder, "lam"), *kept, *probed, *stage_files(folder, "bc"), *decoded],
                "lam",
            ),
            Step(
                f"probe {name}",
                {"lam": to_dict(lam), "windows": e.probe_windows, "probe": PROBE_VERSION},
                [folder / "probe.json"],
                lambda f=folder, d=data: probe_run(f, d, e.probe_windows, show_progress=show_progress, device=device),
                stage="probe",
            ),
            *(
                Step(
                    f"probe {name} step{at}",
                    {"lam": to_dict(lam), "windows": e.probe_windows, "probe": PROBE_VERSION, "at": at},
                    [folder / probe_file(at)],
                    lambda f=folder, d=data, at=at: probe_run(f, d, e.probe_windows, show_progress=show_progress, device=device, at=at),
                    stage="probe",
                )
                for at in keep_at
            ),
            Step(
                f"train bc {name}",
                {"lam": to_dict(lam), "stage": to_dict(stage)},
                [folder / "bc.pt"],
                lambda f=folder, s=stage, d=data: train_bc(f, s, show_progress, lam_data=d, device=device),
                [*stage_files(folder, "bc"), *decoded],
                "bc",
            ),
        ]
        reference_returns = None  # where the shared reference's returns are kept: its owner's folder
        if recipe.train.reference and recipe.simulated:  # the reference only normalises online returns
            # BC on true actions reads frames and actions, never the LAM's weights or masks: runs that share its
            # dataset, frame stack and stage settings (every method of one seed, as a rule) share one network,
            # and one set of its returns (evaluate_run).
            reference = json.dumps([lam.data.path, lam.data.stack, to_dict(stage)], sort_keys=True, default=str)
            reference_returns = reference_owners.get(reference, (folder,))[0] / REFERENCE_RETURNS
            if reference not in reference_owners:
                settings = {"lam": to_dict(lam), "stage": to_dict(stage), **labels}
                reference_owners[reference] = (folder, settings)
                steps.append(
                    Step(
                        f"train bc-actions {name}",
                        settings,
                        [folder / "bc-actions.pt"],
                        lambda f=folder, s=stage, d=data: train_action_bc(f, s, show_progress, lam_data=d, device=device),
                        stage_files(folder, "bc-actions"),
                        "bc",
                    )
                )
            else:
                owner, settings = reference_owners[reference]
                steps.append(
                    Step(
                        f"share bc-actions {name}",
                        {"trained in": str(owner), **settings},
                        [folder / "bc-actions.pt"],
                        lambda o=owner, f=folder: link_files(o, f, REFERENCE_FILES),
                        stage="bc",
                    )
                )
        for budget in recipe.labels:
            target = budget_folder(recipe, folder, budget)
            decoder = replace(stage, labelled=budget)
            where = f"{name} labels={budget}" if len(recipe.labels) > 1 else name

            def decode(f=folder, t=target, s=decoder, d=data):
                link_shared(f, t)
                train_decoder(t, s, show_progress, lam_data=d, device=device)

            steps.append(
                Step(
                    f"train decoder {where}",
                    {"lam": to_dict(lam), "stage": to_dict(decoder), "reference": recipe.train.reference, **labels},
                    [target / "decoder.pt"],
                    decode,
                    stage_files(target, "decoder"),
                    "decoder",
                )
            )
            steps.append(  # on recorded frames: every recipe, data from video included
                Step(
                    f"score actions {where}",
                    {"lam": to_dict(lam), "stage": to_dict(decoder), "scores": ACTION_SCORES_VERSION, **labels},
                    [target / ACTION_SCORES],
                    lambda t=target, d=data: score_actions(t, d, device=device, show_progress=show_progress),
                    stage="evaluate",
                )
            )
            if recipe.simulated:  # ingested data has no simulator to evaluate in
                steps.append(
                    Step(
                        f"evaluate {where}",
                        {"lam": to_dict(lam), "stage": to_dict(decoder), "evaluate": asdict(e), **labels},
                        [target / "evaluate.json"],
                        lambda t=target, d=data, r=reference_returns: evaluate_run(
                            t, e.episodes, e.seed, e.steps, show_progress=show_progress, data=d, device=device, reference_returns=r
                        ),
                        stage="evaluate",
                    )
                )
    return steps


def check_settings(lam, stage, image_size: int, checked: set[str]) -> None:
    """Settings every run's stages will refuse, refused before the first step: optimiser and model settings
    (the model is built once per distinct setting, at the recipe's image size)."""
    from masklam.train.lam import build_model
    from masklam.train.loop import check_optim

    check_optim(lam.optim)
    check_optim(stage.optim)
    key = json.dumps([lam.method, lam.preset, lam.data.stack, lam.model, image_size], sort_keys=True, default=str)
    if key not in checked:
        build_model(lam, {"env": {"render": {"size": image_size}}, "features": {"action": {"shape": [1]}}})
        checked.add(key)


def is_done(step: Step, ledger: dict[str, Any], root: Path) -> bool:
    entry = ledger.get(step.id)
    # The fingerprint without the run folder's path; ledgers written before it was left out hold the absolute one.
    return entry is not None and entry["settings"] in (step.fingerprint(root), step.fingerprint()) and all(p.exists() for p in step.outputs)


def run_recipe(
    recipe: Recipe,
    root: Path,
    workers: int = 1,
    dry_run: bool = False,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
    until: str = STAGES[-1],
) -> list[Step]:
    """Run (or with ``dry_run`` only list) the recipe's steps that are not done yet, up to and including the
    stage ``until``, then the report of what is there."""
    from masklam.report.tables import write_report

    if until not in STAGES:
        raise UsageError(f"unknown stage {until!r}: --until takes one of {', '.join(STAGES)}")
    root = Path(root).resolve()  # one spelling of every path in the steps' settings, whatever the cwd or --out
    steps = [step for step in plan(recipe, root, workers, show_progress) if STAGES.index(step.stage) <= STAGES.index(until)]
    ledger = read_ledger(root)
    done = [is_done(step, ledger, root) for step in steps]
    todo = [step for step, finished in zip(steps, done) if not finished]
    if dry_run:
        for number, (step, finished) in enumerate(zip(steps, done), 1):
            echo(f"{number:>4}. [{'done' if finished else 'todo'}] {step.id}")
        echo(f"{len(todo)} of {len(steps)} steps to run, under {root}")
        return todo
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "recipe.json", recipe_json(recipe))
    for number, step in enumerate(todo, 1):
        echo(f"[{number}/{len(todo)}] {step.id}")
        if step.id in ledger and step.reset:  # done before with other settings: its stage starts over
            del ledger[step.id]  # first: interrupted from here on, the new settings' checkpoint resumes
            atomic_write_json(root / LEDGER, ledger)
            for path in step.reset:
                path.unlink(missing_ok=True)
        began = time.perf_counter()
        step.work()
        ledger[step.id] = {"settings": step.fingerprint(root), "seconds": round(time.perf_counter() - began, 1)}
        atomic_write_json(root / LEDGER, ledger)
    write_report([root], root / "report", echo=echo)
    return todo
