"""`masklam segment`: one configuration, validated at the edge, turned into a mask source."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masklam.data.schema import ORACLE
from masklam.devices import resolve
from masklam.errors import UsageError, did_you_mean
from masklam.ranks import local_rank, rank_and_world_size, rank_device
from masklam.segment.distill import DistillConfig, cache_key, distill, open_teacher_cache, student_function, teacher_on_splits
from masklam.segment.prompts import PromptChain, PromptSpec, check_prompts, parse_prompt
from masklam.segment.writer import SEGMENT_DIR, source_lock, write_mask_source

SAM_MODELS = ("sam_vit_h", "sam_vit_l", "sam_vit_b")
MOBILE_SAM = "mobile_sam"  # weights from `masklam weights fetch mobile_sam`, architecture built by Ultralytics
ULTRALYTICS = "ultralytics:"
PROPAGATE = ("chain", "video")


@dataclass(frozen=True)
class SegmentConfig:
    data: str
    model: str
    prompts: PromptSpec = field(default_factory=PromptSpec)
    checkpoint: str | None = None
    name: str | None = None  # default: the model's name
    batch_size: int | None = None  # frames encoded together; default 1 on a CPU (faster there), 8 on a GPU
    device: str = "auto"  # masklam/devices.py: CUDA when torch sees a GPU
    half: bool = False
    distill: DistillConfig | None = None  # label every frame with a student trained on the teacher's masks
    propagate: str = "chain"  # later frames: prompted by the mask before (chain) or SAM 2's video memory (video)
    imgsz: int | None = None  # the side Ultralytics' predictor resizes frames to (default: the model's own, 1024 for SAM)
    teacher_splits: tuple[str, ...] = ()  # with distill: these splits labelled by the teacher itself, every frame

    def __post_init__(self) -> None:
        if self.model not in (MOBILE_SAM, *SAM_MODELS, ORACLE) and not self.model.startswith(ULTRALYTICS):
            raise UsageError(
                f"unknown --model {self.model!r}{did_you_mean(self.model, (MOBILE_SAM, *SAM_MODELS, 'oracle'))}: choose {MOBILE_SAM}, {', '.join(SAM_MODELS)}, ultralytics:<weights file> or oracle"
            )
        if self.prompts.auto and (self.model.startswith(ULTRALYTICS) or self.model == ORACLE):
            raise UsageError(f"--prompt auto needs a model masklam decodes itself: --model {MOBILE_SAM} or {', '.join(SAM_MODELS)}")
        object.__setattr__(self, "device", resolve(self.device))
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", 1 if self.device == "cpu" else 8)
        if self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.propagate not in PROPAGATE:
            raise UsageError(f"unknown --propagate {self.propagate!r}: choose {' or '.join(PROPAGATE)}")
        if self.propagate == "video" and not (self.model.startswith(ULTRALYTICS) and Path(self.model).name.startswith("sam2")):
            raise UsageError("--propagate video needs SAM 2: --model ultralytics:<path>/sam2_t.pt (or another sam2/sam2.1 file)")
        if self.imgsz is not None and not self.model.startswith(ULTRALYTICS):
            raise UsageError(f"--imgsz is for ultralytics:<weights file> models; {self.model} always encodes frames at 1024 px")
        if self.imgsz is not None and (self.imgsz < 64 or self.imgsz % 32):
            raise UsageError(f"--imgsz {self.imgsz}: give a multiple of 32 of at least 64 (SAM models were trained at 1024)")
        if self.teacher_splits and self.distill is None:
            raise UsageError("--teacher-on SPLITS picks splits the teacher labels instead of the student: it needs --distill N")
        if self.prompts.marked and (self.model == ORACLE or self.propagate == "video"):
            raise UsageError(
                "--on / a --prompts file keyed by SPLIT/EPISODE/FRAME needs a prompted model that follows masks (mobile_sam, sam_vit_*, ultralytics:<SAM weights>)"
            )
        if self.half and not self.device.startswith("cuda"):
            raise UsageError("--half is for GPUs (--device cuda): CPUs compute half precision slowly or not at all")

    @classmethod
    def from_options(
        cls,
        data: str,
        model: str,
        point: list[str] = (),
        box: str | None = None,
        prompt: str | None = None,
        checkpoint: str | None = None,
        name: str | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        half: bool = False,
        distill: int = 0,
        distill_steps: int = 1500,
        propagate: str = "chain",
        prompts: str | None = None,
        reprompt: bool = True,
        imgsz: int | None = None,
        on: str | None = None,
        teacher_on: str | list[str] | None = None,
        distill_composite: float = DistillConfig.composite,
        distill_test_frames: int = DistillConfig.test_frames,
    ) -> "SegmentConfig":
        """From `masklam segment`'s flags (or a recipe's [[segment]] table, which takes the same names)."""
        prompts = PromptSpec() if model == ORACLE else parse_prompt(list(point), box, prompt, prompts, reprompt, on)
        student = DistillConfig(distill, steps=distill_steps, composite=distill_composite, test_frames=distill_test_frames) if distill else None
        splits = tuple(s.strip() for s in (teacher_on.split(",") if isinstance(teacher_on, str) else teacher_on or ()) if s.strip())
        return cls(str(data), model, prompts, checkpoint, name, batch_size, device, half, student, propagate, imgsz, splits)

    @property
    def source(self) -> str:
        model = self.model.removeprefix(ULTRALYTICS)
        if model != self.model:  # ultralytics:path/sam2.1_b.pt -> ultralytics_sam2_1_b
            model = "ultralytics_" + Path(model).name.removesuffix(".pt").replace(".", "_").replace("-", "_").lower()
        return self.name or (f"{model}_student" if self.distill else model)


def mask_function(config: SegmentConfig) -> tuple[Any, dict[str, Any], tuple[str, ...]]:
    """(mask function, description for info.json, mask sources the function reads)."""
    reads = (ORACLE,) if config.prompts.oracle_box else ()
    if config.model == ORACLE:

        def copy(records):
            for record in records:
                yield record.masks[ORACLE]

        return copy, {"kind": ORACLE, "description": "a copy of the simulator's masks"}, (ORACLE,)
    if config.model.startswith(ULTRALYTICS):
        from masklam.segment import ultralytics_backend as ultra

        weights = config.model.removeprefix(ULTRALYTICS)
        if config.propagate == "video":
            segmenter = ultra.Sam2VideoSegmenter(weights, config.prompts, config.device, config.half, config.imgsz)
        else:
            segmenter = ultra.UltralyticsSegmenter(ultra.load_ultralytics(weights), config.prompts, config.device, config.half, config.imgsz)
        return segmenter, ultra.describe(weights, config.prompts, config.propagate, config.imgsz), reads
    if config.model == MOBILE_SAM:
        return (*mobile_sam_segmenter(config), reads)
    from masklam.segment.sam import SamSegmenter, checkpoint_path, describe, load_sam  # SAM_MODELS

    path = checkpoint_path(config.model, config.checkpoint)
    model, architecture = load_sam(path, config.device)
    segmenter = SamSegmenter(model, config.prompts, config.batch_size, config.device, config.half)
    return segmenter, describe(config.model, path, architecture, config.prompts), reads


def mobile_sam_weights(checkpoint: str | None) -> Path:
    """--checkpoint (any MobileSAM state dict, e.g. a fine-tuned or random one), else the fetched, verified official file."""
    from masklam.segment.weights import cached_weights

    if checkpoint is None:
        return cached_weights(MOBILE_SAM)
    path = Path(checkpoint)
    if not path.is_file():
        raise UsageError(f"no MobileSAM checkpoint at {path} (leave --checkpoint out to use the one `masklam weights fetch mobile_sam` caches)")
    return path


def mobile_sam_segmenter(config: SegmentConfig) -> tuple[Any, dict[str, Any]]:
    from masklam.envs.policies import file_sha256
    from masklam.segment.sam import SamSegmenter
    from masklam.segment.ultralytics_backend import load_mobile_sam

    path = mobile_sam_weights(config.checkpoint)
    segmenter = SamSegmenter(load_mobile_sam(path, config.device), config.prompts, config.batch_size, config.device, config.half)
    return segmenter, {"kind": MOBILE_SAM, "checkpoint": path.name, "checkpoint_sha256": file_sha256(path)[:16], **config.prompts.describe()}


def check_before_models(config: SegmentConfig, overwrite: bool = False) -> None:
    """What can be checked without a model, checked before one is loaded (and before a teacher labels frames for
    minutes): the source's name and whether it may be written, the prompts against the dataset's frames, splits and
    episodes, the simulator for oracle prompts, the splits for --teacher-on, enough records and a size to distil."""
    from masklam.data.dataset import open_dataset
    from masklam.data.ingest import require_simulator
    from masklam.segment.writer import check_source_name, claim_source_without_settings

    dataset = open_dataset(config.data)
    if config.model == ORACLE or config.prompts.oracle_box:  # first: without a simulator no name helps
        require_simulator(dataset.info, config.data, "oracle masks (--model oracle, --prompt oracle-box)")
    check_source_name(dataset, config.source)
    claim_source_without_settings(dataset, config.source, overwrite)
    episodes = dataset.episode_frames()
    check_prompts(config.prompts, dataset.info["env"]["render"]["size"], episodes)
    unknown = [split for split in config.teacher_splits if split not in episodes]
    if unknown:
        raise UsageError(f"--teacher-on {','.join(config.teacher_splits)}: the dataset has no split {unknown[0]!r} (it has {', '.join(episodes)})")
    if config.distill is not None:
        from masklam.segment.distill import check_distill

        check_distill(config.distill, len(dataset.index("train")) if "train" in episodes else 0, dataset.info["env"]["render"]["size"], config.data)


def segment_dataset(
    config: SegmentConfig, rank: int | None = None, world_size: int | None = None, overwrite: bool = False, show_progress: bool = True
) -> dict[str, Any]:
    check_before_models(config, overwrite)
    # Under torchrun each rank segments its own shards on the GPU of its LOCAL_RANK (rank_device).
    this_rank, ranks = rank_and_world_size(rank, world_size)
    config = dataclasses.replace(config, device=rank_device(config.device, ranks, local_rank()))
    # The source's writer lock from here, before the teacher and the student: a second writer of the same
    # source is refused at once, not after doing the teacher's work again.
    with source_lock(Path(config.data), config.source, this_rank):
        return segment_locked(config, rank, world_size, overwrite, show_progress)


def segment_locked(config: SegmentConfig, rank: int | None, world_size: int | None, overwrite: bool, show_progress: bool) -> dict[str, Any]:
    make_masks, description, reads = mask_function(config)
    teacher, report, teacher_description = make_masks, {}, description
    cache = Path(config.data) / SEGMENT_DIR / config.source / "teacher"
    if config.prompts.marked:
        from masklam.data.dataset import open_dataset
        from masklam.segment.marked import one_click

        if not isinstance(make_masks, PromptChain):
            raise UsageError(f"--on needs a model whose masks follow from frame to frame; {config.model} does not")
        open_teacher_cache(cache, cache_key(config.distill, teacher_description))
        proposer_settings = config.distill or DistillConfig(frames=10)
        teacher, report["marked"] = one_click(open_dataset(config.data), make_masks, config.prompts, proposer_settings, cache, show_progress)
        description = {**description, "marked": report["marked"]}
    if config.distill is not None:
        student, report["distill"] = distill(config.data, config.source, teacher, reads, config.distill, show_progress, teacher_description, config.device)
        make_masks = student_function(student)
        if config.teacher_splits:
            if config.prompts.marked:
                teacher.proposer = student  # the student, trained on far more frames, proposes better than the proposer
            make_masks = teacher_on_splits(make_masks, teacher, config.teacher_splits, cache)
        description = {**description, "student": report["distill"], **({"teacher_on": list(config.teacher_splits)} if config.teacher_splits else {})}
        reads = reads if config.teacher_splits else ()
    else:
        make_masks = teacher
    result = write_mask_source(config.data, config.source, description, make_masks, reads, rank, world_size, overwrite, show_progress, locked=True)
    if hasattr(teacher, "counts"):  # a prompted model's chains (masklam's own, or one click's)
        result["teacher_counts"] = teacher.counts
    return {**result, **report}
