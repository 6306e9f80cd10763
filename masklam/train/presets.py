"""Finding trainer presets: the TOML files shipped in the package's trainers/ folder (masklam/trainers/)."""

from __future__ import annotations

from pathlib import Path

from masklam.errors import UsageError, did_you_mean
from masklam.packaged import TRAINERS


def trainer_file(name: str) -> Path:
    """A path to a TOML file, or the name of a preset in masklam/trainers/ (with or without .toml)."""
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return path
    preset = TRAINERS / f"{name.removesuffix('.toml')}.toml"
    if preset.is_file():
        return preset
    available = ", ".join(sorted(p.stem for p in TRAINERS.glob("*.toml"))) or f"none found in {TRAINERS}"
    hint = did_you_mean(name.removesuffix(".toml"), [p.stem for p in TRAINERS.glob("*.toml")])
    raise UsageError(f"no trainer preset or TOML file '{name}'{hint}: choose one of {available}")
