"""Ultralytics' segmenters as a mask source: `--model ultralytics:<weights file>` for SAM (sam_b/l/h.pt),
MobileSAM (mobile_sam.pt), SAM 2 / 2.1 (sam2_t.pt ... sam2.1_l.pt) and FastSAM (FastSAM-s.pt, FastSAM-x.pt:
a YOLO instance segmenter whose masks are picked by the prompt).

Ultralytics is AGPL-3.0: it is an optional extra (`pip install 'masklam[ultralytics]'`), imported only here,
only when this backend is asked for. Ultralytics picks the architecture from the weights file's name, so
the file keeps its official name. It would download a missing file: masklam checks the file exists first,
so nothing is ever downloaded. Frames go through Ultralytics' predictor one at a time, each with the prompt
of the episode's chain (masklam.segment.prompts); or, for SAM 2 with `--propagate video`, each episode (chunk)
goes through SAM 2's video predictor as one clip: prompted on its first frame, the mask carried to later frames
by the model's memory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from masklam.envs.policies import file_sha256
from masklam.errors import UsageError
from masklam.segment.prompts import Prompt, PromptChain, PromptSpec, Track

RELEASES = "https://github.com/ultralytics/assets/releases"
NAMES = (
    "sam_b.pt",
    "sam_l.pt",
    "sam_h.pt",
    "mobile_sam.pt",
    "sam2_t.pt",
    "sam2_s.pt",
    "sam2_b.pt",
    "sam2_l.pt",
    "sam2.1_t.pt",
    "sam2.1_s.pt",
    "sam2.1_b.pt",
    "sam2.1_l.pt",
)
FASTSAM = ("FastSAM-s.pt", "FastSAM-x.pt")


def check_weights(weights: str) -> Path:
    """The weights file, if it exists under an official name (Ultralytics would download a missing one)."""
    path = Path(weights)
    if path.name not in NAMES + FASTSAM:
        raise UsageError(f"ultralytics:{weights}: Ultralytics tells its models apart by file name; keep the official one ({', '.join(NAMES + FASTSAM)})")
    if not path.is_file():
        raise UsageError(f"no weights file at {path}: download {path.name} from {RELEASES} and pass its path as --model ultralytics:PATH")
    return path


def import_ultralytics():
    from PIL import Image

    reader = Image.open
    try:
        import ultralytics
    except ImportError:
        raise UsageError("the Ultralytics backend needs its extra (AGPL-3.0): pip install 'masklam[ultralytics]' torch==2.14.1 torchvision==0.29.1") from None
    # Importing ultralytics replaces PIL.Image.open for the whole process (a HEIC fallback that fails with
    # ModuleNotFoundError on a corrupt image); masklam passes it arrays, so keep PIL as it was for the rest.
    Image.open = reader
    return ultralytics


def load_mobile_sam(path: Path, device: str = "cpu"):
    """MobileSAM (TinyViT encoder + SAM's prompt encoder and mask decoder) as a torch module with segment-anything's
    interface, built by Ultralytics (the only loader of its architecture among masklam's extras) from a state dict:
    masklam drives it itself (masklam.segment.sam.SamSegmenter), so a frame is encoded once however many prompts
    it is decoded with (re-prompting, automatic prompts)."""
    import torch

    os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for a hub
    import_ultralytics()
    from ultralytics.models.sam.build import build_mobile_sam

    model = build_mobile_sam()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except Exception as error:
        raise UsageError(f"{path} cannot be loaded as MobileSAM weights ({type(error).__name__}): is it mobile_sam.pt, complete?") from None
    return model.eval().to(device)


def load_ultralytics(weights: str):
    path = check_weights(weights)
    ultralytics = import_ultralytics()
    try:
        return ultralytics.FastSAM(str(path)) if path.name in FASTSAM else ultralytics.SAM(str(path))
    except Exception as error:
        raise UsageError(f"{path} cannot be loaded as {path.name} ({type(error).__name__}: {error})") from None


def prompt_options(prompt: Prompt, fastsam: bool = False) -> dict:
    """A masklam prompt as Ultralytics' keyword arguments: one object, its box and all its points."""
    options = {}
    if prompt.box is not None:
        options["bboxes"] = [list(prompt.box)]
    if prompt.points:
        points, labels = [list(p) for p in prompt.points], list(prompt.labels)
        options |= {"points": points, "labels": labels} if fastsam else {"points": [points], "labels": [labels]}
    return options


class UltralyticsSegmenter(PromptChain):
    def __init__(self, model, prompts: PromptSpec, device: str = "cpu", half: bool = False, imgsz: int | None = None) -> None:
        super().__init__(prompts, batch_size=1)
        self.model, self.device, self.half, self.imgsz = model, device, half, imgsz
        self.fastsam = type(model).__name__ == "FastSAM"  # takes one object's points as a flat list

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return frames  # Ultralytics' predictor encodes each frame itself

    def decode(self, feature: np.ndarray, prompt: Prompt, frame_size: int) -> np.ndarray:
        options = prompt_options(prompt, self.fastsam)
        bgr = np.ascontiguousarray(feature[0][..., ::-1])  # Ultralytics reads arrays as OpenCV's BGR
        if self.half:
            options["half"] = True
        if self.imgsz:
            options["imgsz"] = self.imgsz
        result = self.model.predict(bgr, verbose=False, device=self.device, **options)[0]
        if result.masks is None or len(result.masks.data) == 0:
            return np.zeros((frame_size, frame_size), np.uint8)
        return result.masks.data.any(0).cpu().numpy().astype(np.uint8)


class Sam2VideoSegmenter(PromptChain):
    """SAM 2's own propagation: an episode's frames are written as a lossless clip (FFV1) and read by
    Ultralytics' SAM2VideoPredictor, which segments the first frame from the prompt and every later frame from
    its memory of the frames before. A chunk that continues an episode is prompted by the previous chunk's last
    mask (its box and interior points), as the prompt chain does."""

    def __init__(self, weights: str, prompts: PromptSpec, device: str = "cpu", half: bool = False, imgsz: int | None = None) -> None:
        super().__init__(prompts, batch_size=1)
        path = check_weights(weights)
        import_ultralytics()
        from ultralytics.models.sam import SAM2VideoPredictor

        settings = {
            "task": "segment",
            "mode": "predict",
            "imgsz": imgsz or 1024,
            "conf": 0.25,
            "retina_masks": True,
            "model": str(path),
            "device": device,
            "save": False,
            "verbose": False,
        }
        if half:
            settings["half"] = True
        self.predictor = SAM2VideoPredictor(overrides=settings)

    def segment(self, frames: np.ndarray, first: Prompt | Track, previous: np.ndarray | None = None) -> np.ndarray:
        import cv2

        track = first if isinstance(first, Track) else Track(first, previous)
        prompt = self.next_prompt(track.first, track.previous)
        size = frames.shape[1]
        with tempfile.TemporaryDirectory() as folder:
            clip = str(Path(folder) / "episode.avi")
            writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"FFV1"), 30, (frames.shape[2], size))
            for frame in frames:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV writes BGR
            writer.release()
            masks = []
            for result in self.predictor(source=clip, stream=True, **prompt_options(prompt)):
                found = result.masks is not None and len(result.masks.data) > 0
                masks.append(result.masks.data.any(0).cpu().numpy().astype(np.uint8) if found else np.zeros((size, frames.shape[2]), np.uint8))
        if len(masks) != len(frames):
            raise RuntimeError(f"SAM 2's video predictor returned {len(masks)} masks for {len(frames)} frames")
        track.previous = masks[-1]
        return np.stack(masks)


def describe(weights: str, prompts: PromptSpec, propagate: str = "chain", imgsz: int | None = None) -> dict:
    path = Path(weights)
    size = {"imgsz": imgsz} if imgsz else {}  # without it, the model's own size
    return {"kind": f"ultralytics:{path.name}", "checkpoint_sha256": file_sha256(path)[:16], "propagate": propagate, **size, **prompts.describe()}
