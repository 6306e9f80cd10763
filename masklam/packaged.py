"""Where masklam's own files live: those shipped inside the package (recipes, trainer presets and expert
checkpoints, found with importlib.resources, so an installed masklam, not only a clone, has them), and the
user's cache (fetched weights, writer locks)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CACHE_ENV = "MASKLAM_CACHE"  # the user's cache folder; default ~/.cache/masklam


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "masklam"


def packaged(*parts: str) -> Path:
    """A folder or file of the installed package, e.g. ``packaged("recipes")``."""
    place = resources.files("masklam")
    for part in parts:
        place = place / part
    return Path(str(place))  # a plain folder: masklam is installed unzipped (it ships binary checkpoints)


RECIPES = packaged("recipes")  # masklam run NAME
TRAINERS = packaged("trainers")  # masklam train lam --trainer NAME
SHIPPED_EXPERTS = packaged("experts", "checkpoints")  # --policy expert on DMC tasks
