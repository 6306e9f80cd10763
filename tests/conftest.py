import os
import traceback
from dataclasses import dataclass

import pytest

# Headless rendering for every test, whichever module imports mujoco first.
os.environ.setdefault("MUJOCO_GL", "egl")


def pytest_configure(config):
    # Registered here as well as in pyproject.toml, so the marker also works when pytest runs without the project's config.
    config.addinivalue_line("markers", "slow: takes more than a few seconds; `pytest -m 'not slow'` is the inner loop, CI runs everything")


@dataclass
class Ran:
    """What a `masklam` command did, spelled like subprocess.CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


def run_masklam(*args: str, env: dict[str, str] | None = None) -> Ran:
    """Run `masklam ARGS` in this process (Typer's CliRunner): the same parsing, commands and exit codes as the
    console script, without starting an interpreter that imports torch and MuJoCo for every call.

    An exception that is not a clean exit is a traceback on the returned stderr (exit code 1), as it would be in
    a real process, so a test that expects one line on stderr fails on it."""
    from typer.testing import CliRunner

    from masklam.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env=env, prog_name="masklam")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return Ran(result.exit_code, result.stdout, stderr)


@pytest.fixture(scope="session")
def masklam_cli():
    """`masklam_cli("collect", "--env", ...)` runs a command in-process; see run_masklam."""
    return run_masklam
