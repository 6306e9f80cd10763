"""Recipes that start from [ingest]: planned without a simulator (no oracle, no online evaluation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from masklam.data.ingest import IngestConfig
from masklam.errors import UsageError
from masklam.pipeline.recipe import INGESTED, load_recipe
from masklam.pipeline.run import plan

EXAMPLE = Path(__file__).resolve().parents[2] / "masklam" / "recipes" / "own-video-example.toml"


def test_the_example_recipe_ingests_segments_trains_and_probes_but_never_evaluates(tmp_path):
    recipe = load_recipe(EXAMPLE, [f'ingest.source="{tmp_path}/videos"'])
    assert recipe.collect is None and isinstance(recipe.ingest, IngestConfig) and not recipe.simulated
    assert list(recipe.datasets()) == [INGESTED]
    steps = [step.id for step in plan(recipe, tmp_path / "run", show_progress=False)]
    assert steps[:2] == ["ingest ingested", "segment ingested sam_point"]
    assert any(step.startswith("probe ") for step in steps) and any(step.startswith("train decoder ") for step in steps)
    assert any(step.startswith("score actions ") for step in steps)  # offline: no simulator needed
    assert not [step for step in steps if step.startswith(("evaluate", "train bc-actions", "collect"))]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (['masks=["oracle"]'], "[ingest] data has no oracle"),
        (['collect={env="dmc:cheetah-run"}'], "exactly one of [collect]"),
        (["ingest.size=4"], "--size 4"),
        (["ingest.colour=1"], "unknown setting ingest.colour"),
    ],
)
def test_bad_ingest_recipes_say_why(overrides, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(EXAMPLE, overrides)
