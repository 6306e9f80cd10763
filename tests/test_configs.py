from dataclasses import dataclass, field
from typing import Literal

import pytest

from masklam.configs import ADDED_LATER, load_config, to_dict
from masklam.errors import UsageError


@dataclass(frozen=True)
class Optim:
    lr: float = 3e-4
    steps: int = 100


@dataclass(frozen=True)
class Run:
    method: Literal["lapo", "masklam"] = "masklam"
    channels: tuple[int, ...] = (16, 32, 32)
    mask_source: str | None = "oracle"
    optim: Optim = field(default_factory=Optim)


def test_toml_and_overrides_build_a_typed_config(tmp_path):
    path = tmp_path / "preset.toml"
    path.write_text('method = "lapo"\nchannels = [8, 16, 16]\n[optim]\nsteps = 5\n')
    config = load_config(Run, path, ["optim.lr=1e-3", "mask_source=sam_vit_h"])
    assert config == Run(method="lapo", channels=(8, 16, 16), mask_source="sam_vit_h", optim=Optim(lr=1e-3, steps=5))
    assert load_config(Run, None, ["optim.lr=1"]).optim.lr == 1.0  # ints widen to floats


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], "unknown setting preset.optim.lrr"),
        (["method=vqvae"], "choose one of"),
        (["optim.steps=1.5"], "expected int"),
        (["optim=3"], "must be a section"),
        (["nokey"], "not key=value"),
    ],
)
def test_bad_settings_are_usage_errors(tmp_path, overrides, message):
    path = tmp_path / "preset.toml"
    path.write_text("")
    with pytest.raises(UsageError, match=message):
        load_config(Run, path, overrides)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(Run, tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("method = ")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(Run, tmp_path / "bad.toml")


@dataclass(frozen=True)
class Inner:
    size: int = 1
    added: int = field(default=0, metadata=ADDED_LATER)


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    workers: int = field(default=0, metadata=ADDED_LATER)


def test_settings_added_later_are_recorded_only_when_set():
    """A run folder saved before a setting existed must still match a config that leaves it at its default."""
    assert to_dict(Outer()) == {"inner": {"size": 1}}
    assert to_dict(Outer(Inner(added=3), workers=2)) == {"inner": {"size": 1, "added": 3}, "workers": 2}
