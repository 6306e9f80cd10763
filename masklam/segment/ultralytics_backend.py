"""Ultralytics' segmenters as a mask source: `--model ultralytics:<weights file>` for SAM (sam_b/l/h.pt),
MobileSAM (mobile_sam.pt), SAM 2 / 2.1 (sam2_t.pt ... sam2.1_l.pt) and FastSAM (FastSAM-s.pt, FastSAM-x.pt:
a YOLO instance segmenter whose masks are picked by the prompt).

Ultralytics is AGPL-3.0: it is an optional extra (`pip install 'masklam[ultralytics]'`), imported only here,
only when this backend is asked for. Ultralytics picks the architecture from the weights file's name, so
the file keeps its official name. It would download a missing file: masklam checks the file exists first,
so nothing is ever downloaded. Frames go through Ultralytics' predictor one at a time, each with the prompt
of the episode's chain (masklam.segment.prompts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from masklam.envs.policies import file_sha256
from masklam.errors import UsageError
from masklam.segment.prompts import Prompt, PromptChain, PromptSpec

RELEASES = "https://github.com/ultralytics/assets/releases"
NAMES = ("sam_b.pt", "sam_l.pt", "sam_h.pt", "mobile_sam.pt", "sam2_t.pt", "sam2_s.pt", "sam2_b.pt", "sam2_l.pt",
         "sam2.1_t.pt", "sam2.1_s.pt", "sam2.1_b.pt", "sam2.1_l.pt")
FASTSAM = ("FastSAM-s.pt", "FastSAM-x.pt")


def load_ultralytics(weights: str):
    path = Path(weights)
    if path.name not in NAMES + FASTSAM:
        raise UsageError(f"ultralytics:{weights}: Ultralytics tells its models apart by file name; keep the official one ({', '.join(NAMES + FASTSAM)})")
    if not path.is_file():
        raise UsageError(f"no weights file at {path}: download {path.name} from {RELEASES} and pass its path as --model ultralytics:PATH")
    from PIL import Image

    reader = Image.open
    try:
        from ultralytics import SAM, FastSAM
    except ImportError:
        raise UsageError("the Ultralytics backend needs its extra (AGPL-3.0): pip install 'masklam[ultralytics]' torch==2.14.1 torchvision==0.29.1") from None
    # Importing ultralytics replaces PIL.Image.open for the whole process (a HEIC fallback that fails with
    # ModuleNotFoundError on a corrupt image); masklam passes it arrays, so keep PIL as it was for the rest.
    Image.open = reader
    try:
        return FastSAM(str(path)) if path.name in FASTSAM else SAM(str(path))
    except Exception as error:
        raise UsageError(f"{path} cannot be loaded as {path.name} ({type(error).__name__}: {error})") from None


class UltralyticsSegmenter(PromptChain):
    def __init__(self, model, prompts: PromptSpec, device: str = "cpu", half: bool = False) -> None:
        super().__init__(prompts, batch_size=1)
        self.model, self.device, self.half = model, device, half
        self.fastsam = type(model).__name__ == "FastSAM"  # takes one object's points as a flat list

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return frames  # Ultralytics' predictor encodes each frame itself

    def decode(self, feature: np.ndarray, prompt: Prompt, frame_size: int) -> np.ndarray:
        options = {}
        if prompt.box is not None:
            options["bboxes"] = [list(prompt.box)]
        if prompt.points:  # one object with all its points
            points, labels = [list(p) for p in prompt.points], list(prompt.labels)
            options |= {"points": points, "labels": labels} if self.fastsam else {"points": [points], "labels": [labels]}
        bgr = np.ascontiguousarray(feature[0][..., ::-1])  # Ultralytics reads arrays as OpenCV's BGR
        if self.half:
            options["half"] = True
        result = self.model.predict(bgr, verbose=False, device=self.device, **options)[0]
        if result.masks is None or len(result.masks.data) == 0:
            return np.zeros((frame_size, frame_size), np.uint8)
        return result.masks.data.any(0).cpu().numpy().astype(np.uint8)


def describe(weights: str, prompts: PromptSpec) -> dict:
    path = Path(weights)
    return {"kind": f"ultralytics:{path.name}", "checkpoint_sha256": file_sha256(path)[:16], **prompts.describe()}
