"""Typed configs from TOML files with command-line overrides, validated at the edge.

A config is a (nested) dataclass. ``load_config(cls, path, overrides)`` reads a TOML file, applies
``section.field=value`` overrides (values parsed as TOML literals, so ``lr=3e-4``, ``stack=3``,
``vq=true`` and ``name="x"`` all work, and a bare word is taken as a string), and builds the dataclass.
Unknown keys and values of the wrong type are UsageErrors that name the key and the file.

Values are checked where they are defined: a config dataclass's ``__post_init__`` calls ``require`` (or raises
ValueError), and ``build`` turns the failure into a one-line SettingError naming the full key, so a trainer
file, ``--set`` and a recipe are held to the same rules.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from masklam.errors import UsageError

T = TypeVar("T")


class SettingError(UsageError, ValueError):
    """A setting's value is out of range. ``key`` is the field's name until ``build`` qualifies the message
    with where the field lives (then None). Also a ValueError, for callers that build configs in Python."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def require(condition: bool, key: str, value: Any, rule: str) -> None:
    """Refuse ``key = value`` unless ``condition``; ``rule`` says what a valid value is."""
    if not condition:
        raise SettingError(f"{key} = {value!r}: {rule}", key)


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"override '{text}' is not key=value: write e.g. --set optim.lr=3e-4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for override in overrides:
        path, value = parse_override(override)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"override '{override}': '{part}' is a value, not a section")
        node[path[-1]] = value
    return data


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):  # built already (Python callers)
            return value
        if not isinstance(value, dict):
            example = f"{where}.{dataclasses.fields(annotation)[0].name}=..."
            raise UsageError(f"{where} must be a section (a table of settings such as {example}), not {value!r}")
        return build(annotation, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a section (a table of settings), not {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(annotation)
        if value is None and type(None) in arguments:
            return None
        others = [argument for argument in arguments if argument is not type(None)]
        if len(others) == 1:  # X | None: X's own error says what is wrong
            return _coerce(value, others[0], where)
        for argument in arguments:
            if argument is type(None):
                continue
            try:
                return _coerce(value, argument, where)
            except UsageError:
                continue
        raise UsageError(f"{where} = {value!r} has the wrong type: expected {annotation}")
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise UsageError(f"{where} = {value!r}: choose one of {', '.join(map(repr, typing.get_args(annotation)))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where} = {value!r} must be a list")
        item = typing.get_args(annotation)[0] if typing.get_args(annotation) else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not (isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))):
        raise UsageError(f"{where} = {value!r} has the wrong type: expected {annotation.__name__}")
    return value


def build(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """The dataclass ``cls`` from plain data; unknown keys, wrong types and invalid values are UsageErrors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(f"unknown setting {where}.{unknown[0]}: the settings of {where} are {', '.join(sorted(fields))}")
    values = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except SettingError as error:
        if error.key is None:  # a nested config's, already named in full
            raise
        raise SettingError(f"{where}.{error}") from None
    except ValueError as error:  # a check that does not name its field
        raise SettingError(f"{where}: {error}") from None
    except TypeError as error:  # a required field is missing
        raise UsageError(f"{where}: {error}") from None


def read_toml(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist: check the path") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"config file {path} is not valid TOML ({error})") from None


def load_config(cls: type[T], path: Path | None, overrides: list[str] = ()) -> T:
    data = read_toml(path) if path is not None else {}
    return build(cls, apply_overrides(data, list(overrides)), where=Path(path).stem if path else "config")


# Field metadata of a setting added after run folders were made with the dataclass: to_dict leaves it out while
# it holds its default, so that those folders' saved settings (and a recipe's step fingerprints) still match.
ADDED_LATER = {"recorded": "when it differs from its default"}


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data (for saving next to a run, and comparing on resume)."""
    data = dataclasses.asdict(config)
    _drop_added_defaults(config, data)
    return data


def _drop_added_defaults(config: Any, data: dict[str, Any]) -> None:
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if item.metadata == ADDED_LATER and value == item.default:  # (dataclasses wrap metadata: not `is`)
            del data[item.name]
        elif dataclasses.is_dataclass(value):
            _drop_added_defaults(value, data[item.name])
