"""What one method x seed of a recipe costs on one core, stage by stage, and what the latent-BC label cache saves.

    OMP_NUM_THREADS=1 python benchmarks/run_cost.py --run runs/dcs-cheetah-run-low --out /tmp/cost

``--run`` is a run folder of the recipe whose data is made (`masklam run dcs-cheetah-run-low --until data`).
For each variant the recipe's steps for one method and seed run in a fresh run folder holding a copy of that
data, with the recipe's own settings (the `tiny` preset, 1,000 LAM and stage steps, 6,000 probe windows, 5
evaluation episodes; MaskLAM on the oracle masks), and each step's time comes from steps.json:

- ``before``: latent BC labels every batch with the frozen IDM (LABEL_CACHE_BYTES = 0), as until 7 December;
- ``after``: as shipped, every train window labelled once.

The two variants alternate over ``--repeats`` so that load drift hits both. Each step's seconds are wall time
on one thread: keep the machine otherwise idle. Writes run_cost.json and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from masklam.atomic import atomic_write_json

VARIANTS = ("before", "after")
STAGE_OF = {  # steps.json's step name -> the stage it times
    "train lam": "LAM",
    "probe": "probe",
    "train bc": "latent BC",
    "train bc-actions": "BC on actions",
    "train decoder": "decoder",
    "evaluate": "evaluate",
}


def one_run(run: Path, folder: Path, method: str, variant: str, extra: list[str]) -> dict[str, float]:
    """The recipe's steps of ``method`` x seed 0 in a fresh folder beside a copy of ``run``'s data; seconds per stage."""
    import masklam.train.stages as stages
    from masklam.pipeline.recipe import load_recipe
    from masklam.pipeline.run import run_recipe

    if folder.exists():  # a run folder this script made on an earlier repeat; anything else is not ours to delete
        if not (folder / "recipe.json").is_file() or not (folder / "data" / "low" / "info.json").is_file():
            raise SystemExit(f"{folder} exists and is not a run folder this script made: choose another --out")
        shutil.rmtree(folder)
    shutil.copytree(run / "data" / "low", folder / "data" / "low")
    collected = {"collect low": json.loads((run / "steps.json").read_text())["collect low"]}
    atomic_write_json(folder / "steps.json", collected)  # the data is made: only the run's own steps are timed
    recipe = load_recipe("dcs-cheetah-run-low", [f'methods=["{method}"]', "seeds=[0]", 'masks=["oracle"]', "segment=[]", *extra])
    cache = stages.LABEL_CACHE_BYTES
    stages.LABEL_CACHE_BYTES = 0 if variant == "before" else cache
    try:
        todo = run_recipe(recipe, folder, show_progress=False, echo=lambda line: print(f"  {variant}: {line}", flush=True) if line.startswith("[") else None)
    finally:
        stages.LABEL_CACHE_BYTES = cache
    ledger = json.loads((folder / "steps.json").read_text())
    seconds = {}
    for step in todo:
        name = next((prefix for prefix in STAGE_OF if step.id.startswith(prefix + " ")), None)
        if name is not None:
            seconds[STAGE_OF[name]] = ledger[step.id]["seconds"]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a dcs-cheetah-run-low run folder whose data is made")
    parser.add_argument("--out", type=Path, required=True, help="a scratch folder (the run folders this script made there are replaced)")
    parser.add_argument("--method", default="masklam")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", dest="extra", action="append", default=[], help="a recipe override (a quick check of the script)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    results = {variant: [] for variant in VARIANTS}
    began = time.perf_counter()
    for repeat in range(args.repeats):
        for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
            results[variant].append(one_run(args.run, args.out / variant, args.method, variant, args.extra))
            print(f"repeat {repeat + 1}, {variant}: {results[variant][-1]}", flush=True)
    medians = {v: {stage: statistics.median(r[stage] for r in results[v]) for stage in results[v][0]} for v in VARIANTS}
    atomic_write_json(args.out / "run_cost.json", {"method": args.method, "repeats": args.repeats, "runs": results, "median": medians})
    print(f"\n{args.method} x 1 seed at the recipe scale, one thread, median of {args.repeats} ({time.perf_counter() - began:.0f} s in all)\n")
    print("| stage | before (s) | after (s) | after / before |\n|---|---|---|---|")
    for stage in medians["after"]:
        b, a = medians["before"][stage], medians["after"][stage]
        print(f"| {stage} | {b:.1f} | {a:.1f} | {a / b:.2f} |")
    b, a = sum(medians["before"].values()), sum(medians["after"].values())
    print(f"| **total** | {b:.1f} ({b / 60:.1f} min) | {a:.1f} ({a / 60:.1f} min) | {a / b:.2f} |")
    print("\nBC on true actions is shared by every method of a seed in a recipe: a recipe's cell pays it once per seed.")


if __name__ == "__main__":
    main()
