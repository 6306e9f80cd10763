"""`masklam collect`: roll out a policy in a distracting environment and write a sharded dataset.

The dataset is a pure function of its config: episode ``i`` of a split gets a seed derived
from (dataset seed, split, i), and a shard holds a fixed list of episodes. So shards can be
written in any order, by any worker or rank, and a re-run skips the shards already on disk
(resume) and gives the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pickle
import queue
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

import masklam
from masklam.atomic import atomic_write_json, remove_stale_temp_files
from masklam.data.dataset import INFO, check_backend, get_backend, index_path, read_json, split_counts, write_index
from masklam.data.schema import ORACLE, SCHEMA_VERSION, SPLITS, Feature, Record, RecordMeta, record_key, shard_name
from masklam.data.storage import DATASET_FILES, foreign_files, remove_owned
from masklam.data.validate import CHECKSUMS
from masklam.envs.policies import NoisyPolicy, file_sha256, make_policy, policy_checkpoint
from masklam.envs.spec import EnvSpec
from masklam.errors import UsageError
from masklam.locks import writer_lock
from masklam.processes import no_interrupts_while_starting, worker_initializer
from masklam.ranks import rank_and_world_size

if TYPE_CHECKING:  # the simulator (MuJoCo) loads only when a collection runs: recipes and reports read these settings
    from masklam.envs.env import DistractingEnv, Observation

CONFIG_FILE = "collect.json"


@dataclass(frozen=True)
class CollectOptions:
    """Everything about a collection but the environment: episodes, policy, labels, storage."""

    backend: str = "webdataset"
    episodes: int = 10  # train episodes
    test_episodes: int = 2
    policy: str = "random"
    action_noise: float = 0.0
    seed: int = 0
    labelled_episodes: int | None = None
    label_fraction: float | None = None
    chunk_steps: int = 0  # 0 = a record is a whole episode
    episodes_per_shard: int = 8


@dataclass(frozen=True, kw_only=True)
class CollectConfig(CollectOptions):
    """What defines a dataset. Two runs with equal configs write identical bytes."""

    env: EnvSpec

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if self.episodes < 1 or self.test_episodes < 0:
            raise UsageError(f"--episodes {self.episodes} / --test-episodes {self.test_episodes}: need at least 1 train episode and 0 or more test episodes")
        if self.action_noise < 0:
            raise UsageError(f"--action-noise {self.action_noise} is negative: use a std >= 0 (relative to half the action range)")
        if self.labelled_episodes is not None and self.label_fraction is not None:
            raise UsageError("--labelled-episodes and --label-fraction both given: pass only one")
        if self.labelled_episodes is not None and not 0 <= self.labelled_episodes <= self.episodes:
            raise UsageError(f"--labelled-episodes {self.labelled_episodes} must be between 0 and --episodes ({self.episodes})")
        if self.label_fraction is not None and not 0.0 <= self.label_fraction <= 1.0:
            raise UsageError(f"--label-fraction {self.label_fraction} must be between 0 and 1")
        if self.chunk_steps < 0 or self.episodes_per_shard < 1:
            raise UsageError("--chunk-steps must be >= 0 (0 = whole episodes) and --episodes-per-shard >= 1")

    def identity(self) -> dict[str, Any]:
        """The config as JSON, with the policy file's content hash (the file decides the data)."""
        identity = dataclasses.asdict(self)
        identity["env"] = self.env.to_json()
        policy_file = self.policy_file()
        if policy_file is not None:
            identity["policy_sha256"] = file_sha256(policy_file) if policy_file.is_file() else None
        return identity

    def policy_file(self) -> Path | None:
        """The checkpoint that decides the actions, if any (a shipped DMC expert is one too)."""
        try:
            return policy_checkpoint(self.policy, self.env.env_id, must_exist=False)
        except UsageError:  # no such policy: there is no file to describe (making the policy says why)
            return None


@dataclass(frozen=True, kw_only=True)
class CollectSettings(CollectOptions):
    """`masklam collect`'s options as one flat record (the CLI's flags, a recipe's [collect] table)."""

    env: str
    distractors: str = "none"
    background: bool | None = None  # None: the preset's
    videos: str | None = None
    camera_shake: float | None = None
    color_drift: float | None = None
    objects: int | None = None
    size: int = 64
    camera: str = ""
    steps: int = 0

    def config(self) -> CollectConfig:
        from masklam.envs.spec import RenderSpec, distractor_preset

        distractors = distractor_preset(
            self.distractors, background=self.background, videos=self.videos, camera_scale=self.camera_shake, color_scale=self.color_drift, objects=self.objects
        )
        spec = EnvSpec(env_id=self.env, render=RenderSpec(size=self.size, camera=self.camera), distractors=distractors, episode_steps=self.steps)
        return CollectConfig(env=spec, **{f.name: getattr(self, f.name) for f in dataclasses.fields(CollectOptions)})


@dataclass(frozen=True)
class ShardPlan:
    split: str
    shard: int
    episodes: tuple[int, ...]


# --- the plan: seeds, labels, shards ---------------------------------------------------------
def episode_seed(seed: int, split: str, episode: int) -> int:
    """Seeds of the two splits never collide, and do not depend on the number of episodes."""
    return int(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), episode)).generate_state(1)[0])


def labelled_train_episodes(config: CollectConfig) -> set[int]:
    """Which train episodes keep their actions: a seeded random subset (all of them by default)."""
    if config.labelled_episodes is None and config.label_fraction is None:
        return set(range(config.episodes))
    count = config.labelled_episodes if config.labelled_episodes is not None else round(config.label_fraction * config.episodes)
    order = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(99,))).permutation(config.episodes)
    return {int(e) for e in order[:count]}


def plan_shards(config: CollectConfig) -> list[ShardPlan]:
    plans = []
    for split, count in (("train", config.episodes), ("test", config.test_episodes)):
        for shard, start in enumerate(range(0, count, config.episodes_per_shard)):
            plans.append(ShardPlan(split, shard, tuple(range(start, min(start + config.episodes_per_shard, count)))))
    return plans


# --- rolling out one episode ----------------------------------------------------------------
def _stack_steps(observations: list[Observation], actions: list[np.ndarray], rewards: list[float], terminated: bool, truncated: bool) -> dict[str, np.ndarray]:
    """Per-frame arrays of one episode (one entry per frame, see masklam.data.schema)."""
    frames = len(observations)
    no_action = np.full((1, len(actions[0])), np.nan, np.float32)  # none is taken at the final frame
    steps = {
        "rgb": np.stack([o.rgb for o in observations]),
        "state": np.stack([o.state for o in observations]).astype(np.float32),
        "action": np.concatenate([np.stack(actions).astype(np.float32), no_action]),
        "reward": np.append(np.asarray(rewards, np.float32), np.float32(np.nan)),
        "terminated": np.zeros(frames, dtype=bool),
        "truncated": np.zeros(frames, dtype=bool),
    }
    steps["terminated"][-1] = terminated
    steps["truncated"][-1] = truncated
    for name in observations[0].distractor:
        steps[name] = np.stack([np.asarray(o.distractor[name]) for o in observations])
    return steps


def rollout_episode(env: DistractingEnv, policy, seed: int, progress=None) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Run one episode; return per-frame steps, oracle masks and episode facts."""
    env_seq, policy_seq = np.random.SeedSequence(seed).spawn(2)
    observation = env.reset(int(env_seq.generate_state(1)[0]))
    policy.reset(np.random.default_rng(policy_seq))
    observations, actions, rewards = [observation], [], []
    terminated = truncated = success = False
    while not (terminated or truncated):
        action = np.clip(policy.act(observation.state), env.action_low, env.action_high).astype(np.float32)
        transition = env.step(action)
        observation = transition.observation
        observations.append(observation)
        actions.append(action)
        rewards.append(transition.reward)
        terminated, truncated = transition.terminated, transition.truncated
        success = success or bool(transition.info.get("success", False))
        if progress is not None:
            progress(1)
    steps = _stack_steps(observations, actions, rewards, terminated, truncated)
    masks = np.stack([o.mask for o in observations])
    facts: dict[str, Any] = {"return": float(np.sum(rewards, dtype=np.float64))}
    if env.spec.env_id.startswith("metaworld:"):
        facts["success"] = success
    return steps, masks, facts


def split_into_records(
    split: str, episode: int, seed: int, labelled: bool, steps: dict[str, np.ndarray], masks: np.ndarray, facts: dict[str, Any], chunk_steps: int
) -> list[Record]:
    frames = len(masks)
    transitions = frames - 1
    length = chunk_steps or max(transitions, 1)
    records = []
    for chunk, start in enumerate(range(0, max(transitions, 1), length)):
        stop = min(start + length, transitions) + 1  # chunks share their boundary frame
        chunk_steps_arrays = {name: array[start:stop] for name, array in steps.items() if labelled or name != "action"}
        meta = RecordMeta(
            key=record_key(episode, chunk),
            split=split,
            episode=episode,
            chunk=chunk,
            start=start,
            frames=stop - start,
            episode_frames=frames,
            seed=seed,
            labelled=labelled,
            episode_return=facts["return"],
            extra={k: v for k, v in facts.items() if k != "return"},
        )
        records.append(Record(meta, chunk_steps_arrays, {ORACLE: masks[start:stop]}))
    return records


# --- writing shards -------------------------------------------------------------------------
class ShardWriter:
    """Owns the envs (one per split) and the policy of one process, and writes whole shards."""

    def __init__(self, config: CollectConfig, root: Path) -> None:
        self.config, self.root = config, root
        self.backend = get_backend(config.backend)
        self.labelled = labelled_train_episodes(config)
        self._envs: dict[str, tuple[DistractingEnv, Any]] = {}

    def env(self, split: str) -> tuple[DistractingEnv, Any]:
        if split not in self._envs:
            from masklam.envs.env import DistractingEnv

            env = DistractingEnv(self.config.env, split)
            policy = make_policy(self.config.policy, env)
            if self.config.action_noise > 0:
                policy = NoisyPolicy(policy, self.config.action_noise, env.action_low, env.action_high)
            self._envs[split] = (env, policy)
        return self._envs[split]

    def is_done(self, plan: ShardPlan) -> bool:
        return index_path(self.root, plan.split, plan.shard).is_file() and self.backend.has_shard(self.root, plan.split, plan.shard)

    def write(self, plan: ShardPlan, progress=None) -> None:
        env, policy = self.env(plan.split)
        records, action_sum, action_sq, action_count = [], 0.0, 0.0, 0
        for episode in plan.episodes:
            seed = episode_seed(self.config.seed, plan.split, episode)
            labelled = plan.split == "test" or episode in self.labelled
            steps, masks, facts = rollout_episode(env, policy, seed, progress)
            actions = steps["action"][:-1].astype(np.float64)
            if not np.isfinite(actions).all():  # labelled or not: the action statistics take every transition
                frame = int(np.argmax(~np.isfinite(actions).all(axis=1)))
                raise UsageError(
                    f"refusing to write shard {plan.shard} of split {plan.split!r}: the policy's action at frame "
                    f"{frame} of episode {episode} is NaN or infinite: check the policy ({self.config.policy})"
                )
            action_sum, action_sq, action_count = action_sum + actions.sum(0), action_sq + (actions**2).sum(0), action_count + len(actions)
            records += split_into_records(plan.split, episode, seed, labelled, steps, masks, facts, self.config.chunk_steps)
        # New frames: masks that segmentation added to an earlier version of this shard are gone (write_shard
        # deletes them), so their shard is no longer done for those sources; re-running their command redoes it.
        for marker in self.root.glob(f"segment/*/{plan.split}/{shard_name(plan.shard)}.json"):
            marker.unlink()
        self.backend.write_shard(self.root, plan.split, plan.shard, records, dataset_features(env, records[0].steps["state"].shape[1]))
        # Sums of every transition's true action (labelled or not) give the split's Var(a).
        stats = {"action_count": action_count, "action_sum": np.asarray(action_sum).tolist(), "action_sq_sum": np.asarray(action_sq).tolist()}
        stats["mask_coverage"] = float(np.mean([r.masks[ORACLE].mean() for r in records]))
        write_index(self.root, plan.split, plan.shard, [r.meta for r in records], stats)

    def close(self) -> None:
        for env, _ in self._envs.values():
            env.close()
        self._envs.clear()


def dataset_features(env: DistractingEnv, state_dim: int) -> dict[str, Feature]:
    size = env.spec.render.size
    action_dim = len(env.action_low)
    features = {
        "rgb": Feature("uint8", (size, size, 3), "RGB frame with distractors"),
        "state": Feature("float32", (state_dim,), "proprioceptive state: " + ", ".join(env.sim.state_names)),
        "action": Feature(
            "float32",
            (action_dim,),
            "action taken at this frame, clipped to the bounds; NaN at an episode's final frame and throughout unlabelled episodes (readers return no action for those)",
        ),
        "reward": Feature("float32", (), "reward of the transition from this frame; NaN at an episode's final frame"),
        "terminated": Feature("bool", (), "this frame is a terminal state"),
        "truncated": Feature("bool", (), "this frame ends the episode by the time limit"),
    }
    features.update(env.distractor_features())
    return features


# --- processes ------------------------------------------------------------------------------
_worker_writer: ShardWriter | None = None
_worker_progress: Any = None


def _init_worker(config: CollectConfig, root: Path, progress_queue) -> None:
    # One llvmpipe thread per worker: processes, not threads, are what scale on few cores.
    os.environ["LP_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"  # and one torch thread (checkpoint policies), before torch is imported here
    global _worker_writer, _worker_progress
    _worker_writer = ShardWriter(config, root)
    _worker_progress = progress_queue


def _worker_write(plan: ShardPlan) -> None:
    pending = [0]

    def report(frames: int) -> None:
        pending[0] += frames
        if pending[0] >= 25:
            _worker_progress.put(pending[0])
            pending[0] = 0

    _worker_writer.write(plan, report)
    _worker_progress.put(pending[0])


# --- the command ----------------------------------------------------------------------------
# What masklam writes in a dataset folder: `--overwrite` deletes these and nothing else (see masklam.data.storage).
MASKLAM_FILES = DATASET_FILES


def remove_dataset(root: Path) -> None:
    """Delete a masklam dataset's files, and the folders they leave empty; refuse (deleting nothing) if the folder
    holds anything masklam did not write, or was not made by `masklam collect` at all."""
    foreign = foreign_files(root)
    if foreign or _read_identity(root) is None:
        named = foreign[0] if foreign else f"no {CONFIG_FILE}: it is not a masklam dataset"
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UsageError(
            f"--overwrite refused: {root} holds files masklam did not write ({named}{more}); nothing was deleted: move them away, or choose another --out"
        )
    remove_owned(root, DATASET_FILES)


def prepare_output(root: Path, config: CollectConfig, overwrite: bool) -> None:
    """Refuse a folder made by another command; resume one made by this one; never damage on error."""
    identity = config.identity()
    if root.exists() and not root.is_dir():
        raise UsageError(f"output {root} is a file: pass a folder path to --out")
    if root.is_dir() and any(root.iterdir()):
        existing = _read_identity(root)
        if existing != identity:
            if not overwrite:
                differs = _describe_difference(existing, identity)
                raise UsageError(f"output {root} is not empty and was not made by this command ({differs}): use another --out, or --overwrite to replace it")
            remove_dataset(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".masklam-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"cannot write to output {root} ({error.strerror}): choose a writable --out folder") from None
    if _read_identity(root) != identity:
        atomic_write_json(root / CONFIG_FILE, {"config": identity, "command": _command_line(), "masklam_version": masklam.__version__})


def is_finished(root: Path, config: CollectConfig) -> bool:
    """Whether ``root`` holds this config's dataset, complete and readable: then re-running collect changes nothing
    (info.json keeps the mask sources and anything else added since)."""
    from masklam.data.dataset import open_dataset

    if not (root / INFO).is_file() or _read_identity(root) != config.identity():
        return False
    try:
        dataset = open_dataset(root)
        for split in dataset.info["splits"]:
            dataset.shards(split)  # as many index files as info.json says
        backend = get_backend(config.backend)
        return all(backend.has_shard(root, plan.split, plan.shard) and index_path(root, plan.split, plan.shard).is_file() for plan in plan_shards(config))
    except UsageError:
        return False  # damaged: write what is missing, and info.json again


def _read_identity(root: Path) -> dict | None:
    try:
        return json.loads((root / CONFIG_FILE).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _describe_difference(existing: dict | None, identity: dict) -> str:
    if existing is None:
        return f"it has no {CONFIG_FILE}"
    keys = sorted(k for k in set(existing) | set(identity) if existing.get(k) != identity.get(k))
    return "differs in " + ", ".join(f"{k}: {existing.get(k)!r} -> {identity.get(k)!r}" for k in keys[:3])


def _command_line() -> str:
    return shlex.join(["masklam", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("masklam") else shlex.join(sys.argv)


def collect(
    config: CollectConfig,
    root: Path,
    workers: int = 1,
    overwrite: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    show_progress: bool = True,
) -> bool:
    """Write every shard of this rank; write info.json once all ranks' shards exist. Returns whether the dataset is complete."""
    root = Path(root)
    rank, world_size = rank_and_world_size(rank, world_size, slurm_array=True)
    if workers < 1:
        raise UsageError(f"--workers {workers}: use 1 or more worker processes")
    remove_stale_temp_files(root, same_host=world_size == 1)  # an interrupted writer's (masklam's own names only)
    if is_finished(root, config):
        return True
    # Build one env and the policy before touching the output: bad envs, videos or checkpoints fail here.
    validator = ShardWriter(config, root)
    train_env, _ = validator.env("train")
    if config.test_episodes:
        validator.env("test")
    with writer_lock(root, f"rank{rank}" if world_size > 1 else ""):  # one writer per dataset (and rank)
        prepare_output(root, config, overwrite)
        summary = EnvSummary.of(train_env)

        plans = plan_shards(config)
        todo = [p for i, p in enumerate(plans) if i % world_size == rank and not validator.is_done(p)]
        max_frames = train_env.max_steps + 1
        total = sum(len(p.episodes) for p in todo) * max_frames
        with tqdm(total=total, unit="frame", desc=f"collect {config.env.env_id}", disable=not show_progress or None, smoothing=0.1) as bar:
            if workers == 1 or len(todo) <= 1:
                for plan in todo:
                    validator.write(plan, bar.update)
            else:
                validator.close()
                _write_in_pool(config, root, todo, workers, bar)
        validator.close()
        if all(validator.is_done(p) for p in plans):
            write_info(root, config, plans, summary)
            return True
        return False


def _write_in_pool(config: CollectConfig, root: Path, todo: list[ShardPlan], workers: int, bar: tqdm) -> None:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # a GL context does not survive fork
    progress_queue = context.Queue()
    # Workers die with this process (a killed collect leaves none writing shards behind it); see masklam.processes.
    initargs = (os.getpid(), f"{__name__}:_init_worker", pickle.dumps((config, root)), progress_queue)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context, initializer=worker_initializer, initargs=initargs)
    try:
        with no_interrupts_while_starting():  # workers are started by submit; Ctrl-C is for this process alone
            pending = {pool.submit(_worker_write, plan) for plan in todo}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # re-raise a worker's error here
            try:
                while True:
                    bar.update(progress_queue.get_nowait())
            except queue.Empty:
                pass
    except BaseException:  # Ctrl-C or a worker's error: stop the others now (a re-run resumes), without their tracebacks
        for process in list(pool._processes.values()):  # the executor has no public way to stop running work
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@dataclass(frozen=True)
class EnvSummary:
    """What info.json says about the environment, taken from an env before it is closed."""

    features: dict[str, Feature]
    fps: float
    action_low: list[float]
    action_high: list[float]
    state_names: list[str]

    @classmethod
    def of(cls, env: DistractingEnv) -> EnvSummary:
        return cls(dataset_features(env, env.sim.state_dim), env.sim.fps, env.action_low.tolist(), env.action_high.tolist(), list(env.sim.state_names))


def write_info(root: Path, config: CollectConfig, plans: list[ShardPlan], env: EnvSummary) -> dict:
    """Summarise the finished shards into info.json (the last file written: its presence means complete)."""
    made_by = read_json(root / CONFIG_FILE, "re-run the same masklam collect command")
    splits, count, action_sum, action_sq = {}, 0, 0.0, 0.0
    coverage = []
    for split in SPLITS:
        shard_files = [read_json(index_path(root, p.split, p.shard), "re-run the same masklam collect command") for p in plans if p.split == split]
        records = [RecordMeta.from_json(r) for f in shard_files for r in f["records"]]
        episodes = {r.episode: r for r in records}
        splits[split] = {
            "shards": len(shard_files),
            **split_counts(records),
            "mean_return": finite_or_none(np.mean([r.episode_return for r in episodes.values()])) if episodes else None,
        }
        coverage += [f["mask_coverage"] for f in shard_files]
        if split == "train":
            count = sum(f["action_count"] for f in shard_files)
            action_sum = np.sum([f["action_sum"] for f in shard_files], axis=0)
            action_sq = np.sum([f["action_sq_sum"] for f in shard_files], axis=0)
    mean = action_sum / max(count, 1)
    var = np.maximum(action_sq / max(count, 1) - mean**2, 0.0)
    info = {
        "schema_version": SCHEMA_VERSION,
        "masklam_version": masklam.__version__,
        "backend": config.backend,
        "env": config.env.to_json(),
        "fps": env.fps,
        "features": {name: f.to_json() for name, f in env.features.items()},
        "state_names": env.state_names,
        "action_bounds": {"low": env.action_low, "high": env.action_high},
        "action_stats": {
            "split": "train",
            "transitions": int(count),
            "mean": np.asarray(mean).round(8).tolist(),
            "var": np.asarray(var).round(8).tolist(),
            "var_mean": float(np.round(np.mean(var), 8)),
            "note": "over every train transition's true action, labelled or not; the probe's Var(a) is the mean of var",
        },
        "mask_sources": {
            ORACLE: {"kind": "oracle", "description": "simulator segmentation of the agent's geoms", "coverage": finite_or_none(np.round(np.mean(coverage), 6))}
        },
        "splits": splits,
        "collect": {key: made_by[key] for key in ("config", "command")},
        "checksums": CHECKSUMS[config.backend],
    }
    info["mask_sources"].update(kept_mask_sources(root, config, plans))
    atomic_write_json(root / INFO, info)
    return info


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a statistic of nothing (or of NaN) is null."""
    value = float(value)
    return value if np.isfinite(value) else None


def kept_mask_sources(root: Path, config: CollectConfig, plans: list[ShardPlan]) -> dict[str, Any]:
    """The mask sources an earlier info.json registered (segment, masks transform) whose masks every shard still
    holds: writing info.json again (a resumed or repaired collect) keeps them registered."""
    try:
        earlier = json.loads((root / INFO).read_text())["mask_sources"]
        if not isinstance(earlier, dict):
            return {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    backend = get_backend(config.backend)
    return {
        source: entry for source, entry in earlier.items() if source != ORACLE and all(source in backend.mask_sources(root, p.split, p.shard) for p in plans)
    }
