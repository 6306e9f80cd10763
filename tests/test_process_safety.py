"""Process safety of long jobs (issue 19): settings are checked before anything runs or a folder is claimed,
workers die with their parent, interrupted writers' temp files are cleaned up, a resumed run logs each step once,
run folders move with their data, and network failures and Ctrl-C are one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from masklam.cli import app
from masklam.pipeline.run import Step, is_done

TINY_LAM = [
    "--trainer",
    "lapo-tiny",
    "--set",
    "optim.steps=4",
    "--set",
    "data.batch_size=4",
    "--set",
    "log_every=1",
    "--set",
    "checkpoint_every=2",
    "--no-progress",
]
TINY_STAGES = ["--stage-set", "optim.steps=2", "--stage-set", "batch_size=4", "--stage-set", "preset=tiny", "--stage-set", "shuffle_buffer=16"]


def cli(*args: str):
    """Run a masklam command in this process; (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, stderr: str, expected_code: int = 2) -> str:
    lines = stderr.strip().splitlines()
    assert code == expected_code and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr)
    return lines[0]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """2 train episodes (1 labelled, 20 labelled transitions) and 1 test episode of 20 steps, 32 px."""
    root = tmp_path_factory.mktemp("safety") / "data"
    code, _, err = cli(
        "collect",
        "--env",
        "dmc:cheetah-run",
        "--out",
        root,
        "--episodes",
        2,
        "--test-episodes",
        1,
        "--steps",
        20,
        "--size",
        32,
        "--labelled-episodes",
        1,
        "--no-progress",
    )
    assert code == 0, err
    return root


# --- 1. every stage's settings checked before the first stage runs ---------------------------------------------
def test_train_all_refuses_a_label_budget_the_dataset_lacks_before_training(tiny, tmp_path):
    code, _, err = cli("train", "all", "--data", tiny, "--out", tmp_path / "run", "--labelled", 2000, *TINY_LAM, *TINY_STAGES)
    assert "only 20 labelled train transitions" in one_line_error(code, err)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing claimed


def test_train_all_refuses_bad_stage_settings_before_training(tiny, tmp_path):
    code, _, err = cli("train", "all", "--data", tiny, "--out", tmp_path / "run", *TINY_LAM, *TINY_STAGES, "--stage-set", "optim.lr=-1")
    assert "optim" in one_line_error(code, err)
    assert not (tmp_path / "run").exists()


def test_a_decoder_only_change_retrains_only_the_decoder(tiny, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("train", "all", "--data", tiny, "--out", run, "--no-reference", *TINY_LAM, *TINY_STAGES)
    assert code == 0, err
    kept = {name: (run / name).stat().st_mtime_ns for name in ("lam.pt", "bc.pt", "bc-config.json")}
    code, out, err = cli("train", "all", "--data", tiny, "--out", run, "--no-reference", "--labelled", 10, *TINY_LAM, *TINY_STAGES)
    assert code == 0, err
    assert "decoder: settings changed" in out and "bc:" not in out
    assert {name: (run / name).stat().st_mtime_ns for name in kept} == kept  # the LAM and the latent policy stay
    assert json.loads((run / "decoder-config.json").read_text())["labelled"] == 10
    # A changed LAM is another run: refused, and nothing of the old one is touched.
    code, _, err = cli("train", "all", "--data", tiny, "--out", run, "--no-reference", *TINY_LAM, "--set", "seed=1", *TINY_STAGES)
    assert "another config" in one_line_error(code, err)
    assert (run / "decoder.pt").exists()


def test_recipes_refuse_label_budgets_their_datasets_cannot_have(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('labels = [5000]\n[collect]\nenv = "dmc:cheetah-run"\nsteps = 20\nepisodes = 3\nlabelled_episodes = 2\n')
    code, _, err = cli("run", recipe, "--out", tmp_path / "out", "--dry-run")
    assert "at most 40 labelled train transitions" in one_line_error(code, err)
    recipe.write_text('[collect]\nenv = "dmc:cheetah-run"\nsteps = 20\nepisodes = 3\nlabelled_episodes = 0\n')
    assert "no labelled train episodes" in one_line_error(*cli("run", recipe, "--dry-run")[::2])
    recipe.write_text('[collect]\nenv = "dmc:cheetah-run"\nsteps = 20\n[train]\nlam = ["optim.lr=-1"]\n')
    assert "optim" in one_line_error(*cli("run", recipe, "--out", tmp_path / "out", "--dry-run")[::2])
    assert not (tmp_path / "out").exists()


# --- 2. settings validated in full before a run folder is claimed ----------------------------------------------
def test_a_rejected_learning_rate_claims_no_run_folder(tiny, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("train", "lam", "--data", tiny, "--out", run, *TINY_LAM, "--set", "optim.lr=-1")
    assert "lr" in one_line_error(code, err)
    assert not (run / "lam-config.json").exists()
    code, _, err = cli("train", "lam", "--data", tiny, "--out", run, *TINY_LAM)  # the corrected command runs
    assert code == 0, err


def test_probe_with_no_windows_is_one_line(tiny, tmp_path):
    code, _, err = cli("probe", tmp_path, "--data", tiny, "--windows", 0)
    assert "--windows 0" in one_line_error(code, err)


# --- 4. a resumed run logs each step once; Ctrl-C is one line, exit 130, and resumable ---------------------------
def test_an_interrupted_run_resumes_with_each_step_logged_once(tiny, tmp_path, monkeypatch):
    import masklam.train.loop as loop

    run, real_step, calls = tmp_path / "run", loop.train_step, []

    def interrupted_at_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # steps 1-3 logged, the checkpoint holds step 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted_at_the_third_step)
    code, _, err = cli("train", "lam", "--data", tiny, "--out", run, *TINY_LAM)
    assert "interrupted" in one_line_error(code, err, expected_code=130)
    assert [json.loads(line)["step"] for line in (run / "lam-metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    monkeypatch.setattr(loop, "train_step", real_step)
    code, _, err = cli("train", "lam", "--data", tiny, "--out", run, *TINY_LAM)
    assert code == 0, err
    assert [json.loads(line)["step"] for line in (run / "lam-metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


# --- 5. run folders move with their data ---------------------------------------------------------------------
def test_a_moved_run_folder_finds_its_dataset_and_resumes(tiny, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny, project / "data")
    monkeypatch.chdir(project)
    code, _, err = cli("train", "lam", "--data", "data", "--out", "runs/a", *TINY_LAM)  # relative paths
    assert code == 0, err
    saved = json.loads((project / "runs/a/lam-config.json").read_text())
    assert saved["data"]["path"] == str(project / "data") and saved["_locations"]["data.path"] == "../../data"

    moved = tmp_path / "elsewhere" / "project"
    shutil.move(project, moved)
    monkeypatch.chdir(tmp_path)
    # The stages after the LAM find the dataset beside the run folder, where it moved with it.
    code, _, err = cli("train", "bc", moved / "runs/a", "--set", "optim.steps=1", "--set", "batch_size=4", "--set", "preset=tiny", "--no-progress")
    assert code == 0, err
    # The same command, given the moved dataset from another directory, resumes: the same dataset, not another config.
    code, _, err = cli("train", "lam", "--data", moved / "data", "--out", moved / "runs/a", *TINY_LAM)
    assert code == 0, err
    assert json.loads((moved / "runs/a/lam-config.json").read_text())["data"]["path"] == str(moved / "data")

    # Neither where it was nor beside the run: say what to pass.
    shutil.move(moved / "data", tmp_path / "data-only")
    code, _, err = cli("evaluate", moved / "runs/a", "--episodes", 1)
    assert "pass --data" in one_line_error(code, err)


def test_a_copied_pipeline_folder_finds_its_steps_done(tmp_path):
    old, new = tmp_path / "old", tmp_path / "copy"
    settings = lambda root: {"lam": {"data": {"path": str(root / "data" / "low")}}}  # noqa: E731
    outputs = lambda root: [root / "lam.pt"]  # noqa: E731
    for root in (old, new):
        root.mkdir()
        (root / "lam.pt").write_bytes(b"")
    done = Step("train lam low lapo seed0", settings(old), outputs(old), lambda: None)
    ledger = {done.id: {"settings": done.fingerprint(old)}}
    assert is_done(Step(done.id, settings(new), outputs(new), lambda: None), ledger, new)
    changed = {"lam": {"data": {"path": str(new / "data" / "low")}, "seed": 1}}
    assert not is_done(Step(done.id, changed, outputs(new), lambda: None), ledger, new)


# --- 3. temp files of interrupted writers ------------------------------------------------------------------------
def test_temp_files_of_a_dead_writer_are_not_counted_and_are_removed_by_the_next_run(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    bytes_before = json.loads(cli("info", data, "--json")[1])["bytes_on_disk"]
    dead = 2**22 + 12345  # above any pid Linux hands out: no such process
    leftovers = [
        data / "train" / f".shard-000000.tar.masklam-{dead}-140.tmp",
        data / f".masklam-tmp-{dead}-abc123" / "node" / "zarr.json",
        data / "index" / "train" / f".shard-000000.json.masklam-{dead}-7.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 4096)
    # Not masklam's temp names, however much they look like them (a dead pid too): never deleted.
    users = [data / "notes.tmp", data / ".shard.tmp", data / ".tmp-cache" / "blob", data / "index" / f".draft.{dead}-1.tmp"]
    users += [data / f".tmp-{dead}-abc123" / "zarr.json", data / f".write-test-{dead}"]
    for path in users:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    mine = data / "train" / f".shard-000001.tar.masklam-{os.getpid()}-1.tmp"  # a live writer's (this process)
    mine.write_bytes(b"y")
    assert json.loads(cli("info", data, "--json")[1])["bytes_on_disk"] == bytes_before + sum(p.stat().st_size for p in users)
    code, _, err = cli(
        "collect",
        "--env",
        "dmc:cheetah-run",
        "--out",
        data,
        "--episodes",
        2,
        "--test-episodes",
        1,
        "--steps",
        20,
        "--size",
        32,
        "--labelled-episodes",
        1,
        "--no-progress",
    )
    assert code == 0, err
    assert not any(p.exists() for p in leftovers) and not (data / f".masklam-tmp-{dead}-abc123").exists()
    assert all(p.read_text() == "mine" for p in users) and mine.exists()


# --- 6. network failures ------------------------------------------------------------------------------------------
def test_an_unreachable_hub_is_one_line_and_leaves_no_folder(tiny, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("pull", "me/tiny", "--out", tmp_path / "pulled", "--no-progress")
    assert "could not reach the Hub" in one_line_error(code, err)
    assert not (tmp_path / "pulled").exists()
    code, _, err = cli("train", "lam", "--data", "hf://datasets/me/tiny", "--out", tmp_path / "run", *TINY_LAM)
    assert "could not reach" in one_line_error(code, err)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def fresh_s3_filesystems():
    """fsspec keeps S3 filesystems by their arguments, with the endpoint the environment had when each was made:
    forget them before and after, so no other test reads through this one's (unreachable) endpoint."""
    s3fs = pytest.importorskip("s3fs")
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_an_unreachable_s3_endpoint_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, fresh_s3_filesystems):
    for name, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)  # nothing listens on port 9; one attempt, not botocore's retries
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    for command in (["info", "s3://bucket/data"], ["train", "lam", "--data", "s3://bucket/data", "--out", tmp_path / "run", *TINY_LAM]):
        code, _, err = cli(*command)
        line = one_line_error(code, err)
        assert "could not reach" in line and "127.0.0.1:9" in line, line  # not "no dataset folder"
    assert not (tmp_path / "run").exists()


# --- 3. workers die with their parent; Ctrl-C stops them quietly ----------------------------------------------
def session_processes(sid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    found.append(int(entry))
            except OSError:  # gone meanwhile
                pass
    return found


def start_collect(out: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "masklam.cli",
        "collect",
        "--env",
        "dmc:cheetah-run",
        "--out",
        str(out),
        "--episodes",
        "4",
        "--test-episodes",
        "0",
        "--steps",
        "300",
        "--size",
        "32",
        "--episodes-per-shard",
        "1",
        "--workers",
        "2",
        "--no-progress",
    ]
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)


def as_from_a_terminal() -> None:
    """The child's SIGINT as a shell gives it: handled and not blocked. A child inherits both from this test
    process, where earlier in-process tests may have left them otherwise (a full CI run once gave the collect a
    SIGINT it could not receive: it ran to the end, exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def wait_for_workers(process: subprocess.Popen, count: int = 4, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(session_processes(process.pid)) < count:  # the main process, the resource tracker and two workers
        assert time.time() < deadline and process.poll() is None, "the workers never started"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_collect_leaves_no_worker(tmp_path):
    process = start_collect(tmp_path / "data")
    try:
        wait_for_workers(process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.time() + 10
        while session_processes(process.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert session_processes(process.pid) == []
    finally:
        for pid in session_processes(process.pid):
            os.kill(pid, signal.SIGKILL)


def test_a_ctrl_c_while_workers_start_is_kept_for_after_and_spares_the_workers():
    from masklam.processes import no_interrupts_while_starting

    probe = "import signal; print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # earlier tests may have changed it
    finished = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with no_interrupts_while_starting():
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C while workers start
                worker = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
                finished = True
            time.sleep(0.05)  # the pending signal is handled here, on leaving the block
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished, "the Ctrl-C stopped the block: its workers would be half started"
    assert worker.stdout.strip() == "True", "a process started inside the block must not see Ctrl-C"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_of_collect_with_workers_is_one_line(tmp_path):
    process = start_collect(tmp_path / "data")
    try:
        wait_for_workers(process)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        _, err = process.communicate(timeout=60)
        assert process.returncode in (130, -signal.SIGINT), err
        assert err.strip().splitlines() == ["error: interrupted (Ctrl-C); re-run the same command to resume"]
        deadline = time.time() + 10
        while session_processes(process.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert session_processes(process.pid) == []
    finally:
        for pid in session_processes(process.pid):
            os.kill(pid, signal.SIGKILL)


RECIPE = """
name = "safety"
methods = ["lapo"]
labels = [0]

[collect]
env = "dmc:cheetah-run"
size = 32
steps = 20
episodes = 2
test_episodes = 1
labelled_episodes = 2  # the probe cross-validates over labelled train episodes: it needs two

[train]
preset = "tiny"
lam = ["optim.steps=2", "data.batch_size=4"]
stages = ["optim.steps=2", "batch_size=4", "shuffle_buffer=16"]
reference = false

[evaluate]
probe_windows = 30
episodes = 1
"""


@pytest.mark.slow
def test_a_recipe_rerun_with_another_label_budget_retrains_only_the_decoder(tmp_path):
    recipe, root = tmp_path / "safety.toml", tmp_path / "run"
    recipe.write_text(RECIPE)
    code, _, err = cli("run", recipe, "--out", root, "--no-progress")
    assert code == 0, err
    seed = root / "runs" / "none" / "lapo" / "seed0"
    kept = {name: (seed / name).stat().st_mtime_ns for name in ("lam.pt", "bc.pt", "probe.json")}
    code, out, err = cli("run", recipe, "--out", root, "--set", "labels=[10]", "--no-progress")
    assert code == 0, err
    ran = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert ran == ["train decoder none lapo seed0", "score actions none lapo seed0", "evaluate none lapo seed0"], out
    assert {name: (seed / name).stat().st_mtime_ns for name in kept} == kept
    assert json.loads((seed / "decoder-config.json").read_text())["labelled"] == 10
    # The whole folder moved elsewhere: every step is found done.
    shutil.move(root, tmp_path / "moved")
    code, out, err = cli("run", recipe, "--out", tmp_path / "moved", "--set", "labels=[10]", "--dry-run")
    assert code == 0 and "0 of" in out, out + err
