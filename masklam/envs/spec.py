"""Typed environment configuration: which simulator task, how it is rendered, which distractors.

Everything here is validated when built, so a bad env id, preset or size fails before any
work starts, with a message that says what to do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from masklam.errors import UsageError, did_you_mean

DMC_TASKS = (
    "cheetah-run",
    "walker-run",
    "walker-walk",
    "walker-stand",
    "hopper-hop",
    "hopper-stand",
    "humanoid-walk",
    "humanoid-run",
    "humanoid-stand",
    "reacher-easy",
    "reacher-hard",
    "finger-spin",
    "finger-turn_easy",
    "cartpole-swingup",
    "cartpole-balance",
)

# Meta-World MT10; every other v3 task of metaworld's ALL_V3_ENVIRONMENTS is accepted too.
METAWORLD_MT10 = (
    "reach",
    "push",
    "pick-place",
    "door-open",
    "drawer-open",
    "drawer-close",
    "button-press-topdown",
    "peg-insert-side",
    "window-open",
    "window-close",
)

MIN_SIZE, MAX_SIZE = 16, 1024


@dataclass(frozen=True)
class RenderSpec:
    """How frames are rendered. Recorded in every dataset so it says how it was made.

    Shadows, multisampling and reflections cost 4-10x on a CPU renderer and carry no
    information about the agent, so they are off by default.
    """

    size: int = 64
    camera: str = ""  # "" = the suite's default camera (DMC camera 0, Meta-World "corner")
    shadows: bool = False
    multisampling: bool = False
    reflections: bool = False

    def __post_init__(self) -> None:
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise UsageError(f"image size {self.size} is impossible: use a size between {MIN_SIZE} and {MAX_SIZE} px (64 and 128 are usual)")


@dataclass(frozen=True)
class DistractorSpec:
    """Which distractors are on, each component independently."""

    background: bool = False  # replace the background pixels with a moving natural video
    videos: str = "builtin"  # video source: "builtin" or a folder (see masklam.envs.video)
    camera_scale: float = 0.0  # camera shake; 0.1 easy, 0.3 hard
    color_scale: float = 0.0  # colour drift of all materials
    objects: int = 0  # moving distractor objects

    def __post_init__(self) -> None:
        for name in ("camera_scale", "color_scale"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"distractor {name.replace('_', ' ')} {value} is out of range: use a value in [0, 1] (0.1 easy, 0.3 hard)")
        if not 0 <= self.objects <= 16:
            raise UsageError(f"{self.objects} distractor objects is out of range: use 0 to 16")

    @property
    def active(self) -> bool:
        return self.background or self.camera_scale > 0 or self.color_scale > 0 or self.objects > 0


PRESETS: dict[str, DistractorSpec] = {
    "none": DistractorSpec(),
    # The MaskLAM paper's "distractor-low": dynamic background only.
    "low": DistractorSpec(background=True),
    # LAOM's setting: background + camera + colour at scale 0.1.
    "hard": DistractorSpec(background=True, camera_scale=0.1, color_scale=0.1),
    "extreme": DistractorSpec(background=True, camera_scale=0.3, color_scale=0.3, objects=3),
}


def distractor_preset(name: str, **overrides: Any) -> DistractorSpec:
    """A named preset with some components overridden (None means keep the preset's value)."""
    if name not in PRESETS:
        raise UsageError(f"unknown distractor preset '{name}'{did_you_mean(name, PRESETS)}: choose one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **changes)


@dataclass(frozen=True)
class EnvId:
    suite: str  # "dmc" or "metaworld"
    task: str  # "cheetah-run" / "push-v3"

    def __str__(self) -> str:
        return f"{self.suite}:{self.task}"


def parse_env_id(env_id: str) -> EnvId:
    """'dmc:cheetah-run' or 'metaworld:push' / 'metaworld:push-v3'."""
    suite, sep, task = env_id.partition(":")
    if not sep or not task:
        raise UsageError(f"env id '{env_id}' has no suite: write dmc:<domain>-<task> (e.g. dmc:cheetah-run) or metaworld:<task> (e.g. metaworld:push-v3)")
    if suite == "dmc":
        if task not in DMC_TASKS:
            hint = did_you_mean(env_id, [f"dmc:{t}" for t in DMC_TASKS])
            raise UsageError(f"unknown env '{env_id}'{hint}: DMC tasks are {', '.join(DMC_TASKS)}")
        return EnvId("dmc", task)
    if suite == "metaworld":
        name = task if task.endswith("-v3") else f"{task}-v3"
        if name.removesuffix("-v3") in METAWORLD_MT10:  # known without importing Meta-World (and MuJoCo)
            return EnvId("metaworld", name)
        from masklam.envs.metaworld import metaworld_task_names

        if name not in metaworld_task_names():
            hint = did_you_mean(env_id, [f"metaworld:{t}" for t in metaworld_task_names()])
            raise UsageError(f"unknown env '{env_id}'{hint}: Meta-World MT10 tasks are {', '.join(t + '-v3' for t in METAWORLD_MT10)} (any v3 task works)")
        return EnvId("metaworld", name)
    raise UsageError(f"unknown env suite '{suite}' in '{env_id}'{did_you_mean(suite, ('dmc', 'metaworld'))}: use dmc:<domain>-<task> or metaworld:<task>")


@dataclass(frozen=True)
class EnvSpec:
    """Everything that decides what an environment shows: the task, rendering and distractors."""

    env_id: str
    render: RenderSpec = RenderSpec()
    distractors: DistractorSpec = DistractorSpec()
    episode_steps: int = 0  # 0 = the suite's own limit (DMC 1000, Meta-World 500)

    def __post_init__(self) -> None:
        parse_env_id(self.env_id)
        if self.episode_steps < 0:
            raise UsageError(f"episode length {self.episode_steps} is negative: use a positive number of steps (0 = the suite's limit)")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EnvSpec:
        return cls(
            env_id=obj["env_id"],
            render=RenderSpec(**obj["render"]),
            distractors=DistractorSpec(**obj["distractors"]),
            episode_steps=obj["episode_steps"],
        )
