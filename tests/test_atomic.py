from pathlib import Path

import pytest

from masklam.atomic import atomic_file, atomic_write_json, dumps_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "info.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write(b"half a fi")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == dumps_json({"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["info.json"]


def test_canonical_json_does_not_depend_on_key_order():
    assert dumps_json({"b": 1, "a": [1, 2]}) == dumps_json({"a": [1, 2], "b": 1})
    with pytest.raises(ValueError):
        dumps_json({"x": float("nan")})  # NaN is not JSON: refuse rather than write a file others cannot read
