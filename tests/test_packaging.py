"""An installed masklam (a built wheel, not this clone) has its recipes, trainer presets and experts: recipes
and presets are package data found with importlib.resources, by name, and a file path still overrides them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import masklam
from masklam.errors import UsageError

REPO = Path(masklam.__file__).resolve().parents[1]


@pytest.mark.slow  # builds and installs a wheel: 22-68 s on the shared 2-core machine (load 10-11), mostly pip
def test_installed_wheel_plans_the_quickstart_outside_the_clone(tmp_path):
    # Build from a copy of the sources, so the clone gets no build/ or egg-info.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "masklam", source / "masklam", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-compile", "--target", str(site), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(source)  # nothing may be read from the sources any more
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import sys, masklam\n"
        "print('from', masklam.__file__)\n"
        "from masklam.cli import main\n"
        "sys.argv = ['masklam', 'run', 'quickstart', '--dry-run', '--out', 'runs/q']\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed copy first, and not this clone
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"from {site}" in result.stdout
    assert "29 of 29 steps to run" in result.stdout
    assert not (elsewhere / "runs").exists()  # a dry run writes nothing


def test_recipes_and_trainers_are_package_data():
    from masklam.packaged import RECIPES, SHIPPED_EXPERTS, TRAINERS

    assert RECIPES.parent == TRAINERS.parent == Path(masklam.__file__).parent
    assert (RECIPES / "quickstart.toml").is_file() and (TRAINERS / "masklam-tiny.toml").is_file()
    assert (SHIPPED_EXPERTS / "cheetah-run.pt").is_file()


def test_a_file_path_overrides_a_shipped_name(tmp_path, monkeypatch):
    from masklam.pipeline.recipe import load_recipe
    from masklam.train.presets import trainer_file

    text = (Path(masklam.__file__).parent / "recipes" / "quickstart.toml").read_text()
    (tmp_path / "quickstart.toml").write_text(text.replace("\nseeds = [0]\n", "\nseeds = [0, 1]\n"))
    monkeypatch.chdir(tmp_path)
    assert load_recipe("quickstart").seeds == [0]  # the name: the shipped recipe
    assert load_recipe("quickstart.toml").seeds == [0, 1]  # a path: that file
    (tmp_path / "mine.toml").write_text('method = "lapo"\npreset = "tiny"\n')
    assert trainer_file("mine.toml") == Path("mine.toml")
    assert trainer_file("lapo-tiny").parent.name == "trainers"
    with pytest.raises(UsageError, match="quickstart"):
        load_recipe("no-such-recipe")
