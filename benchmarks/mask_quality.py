"""Mask quality of pretrained MobileSAM against the simulator's oracle: tasks x distractor presets x prompting
strategies, at a frame size you choose; writes a Markdown table (and, with --doc, puts it into docs/segment.md).

    masklam weights fetch mobile_sam
    OMP_NUM_THREADS=1 python benchmarks/mask_quality.py --frames 10 --stride 4 --sizes 128 --out /tmp/mq --doc docs/segment.md

A cell is one task, preset and size: one episode (expert policy) is collected, its first ``frames x stride``
steps are kept every ``stride``-th (a slower frame rate, so a few frames span the first few dozen steps, where
the chains drift), every frame is encoded once, and each strategy runs its prompt chain on those encodings:

- ``oracle-box``: each episode's first frame prompted with the box of its oracle mask (one click per episode,
  emulated), re-prompting when the followed mask jumps or drifts;
- ``oracle-box-noreprompt``: the same, re-prompting only on an empty mask (masklam before re-prompting);
- ``point``: one positive click on the first frame, the oracle mask's deepest pixel (a person's click);
- ``auto``: no human: ``--prompt auto`` (masklam.segment.prompts.PromptChain.auto_prompt).

IoU / precision / recall are counted over every pixel of every frame (as `masks compare` does); s/frame is the
encoder's time per frame plus the strategy's own decoding time per frame, on this machine's load. Cells are
resumable (one JSON per cell under --out); the worst frames of the two worst cells (oracle-box prompt) and of the
worst cell with no human (auto) are drawn.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from masklam.atomic import atomic_file, atomic_write_bytes, atomic_write_json
from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.errors import UsageError
from masklam.segment.compare import worst_frames_picture
from masklam.segment.prompts import Prompt, PromptSpec, Track, follow
from masklam.segment.sam import SamSegmenter
from masklam.segment.ultralytics_backend import load_mobile_sam
from masklam.segment.weights import cached_weights

TASKS = ("dmc:cheetah-run", "dmc:walker-run", "dmc:hopper-hop", "dmc:finger-spin", "metaworld:push-v3", "metaworld:door-open-v3")
PRESETS = ("none", "low", "hard", "extreme")
STRATEGIES = ("oracle-box", "oracle-box-noreprompt", "point", "auto")
START, END = "<!-- mask-quality:start -->", "<!-- mask-quality:end -->"


class Encoded(SamSegmenter):
    """A segmenter whose frames were encoded already: the strategies share one encoder pass."""

    def __init__(self, model, prompts: PromptSpec, features: list) -> None:
        super().__init__(model, prompts, batch_size=1)
        self.cached = features

    def features(self, frames):
        return iter(self.cached[: len(frames)])


def episode(task: str, preset: str, size: int, steps: int) -> tuple[np.ndarray, np.ndarray, str]:
    root = Path(tempfile.mkdtemp(prefix="mask-quality-")) / "data"
    env = EnvSpec(task, RenderSpec(size=size), distractor_preset(preset), episode_steps=steps)
    try:
        collect(CollectConfig(env=env, episodes=1, test_episodes=0, policy="expert", seed=7), root, show_progress=False)
        policy = "expert"
    except UsageError:  # no expert for this task: a random policy still shows the agent
        collect(CollectConfig(env=env, episodes=1, test_episodes=0, seed=7), root, show_progress=False)
        policy = "random"
    record = next(open_dataset(root).records("train"))
    return record.steps["rgb"], record.masks["oracle"], policy


def strategy_spec(name: str, oracle_first: np.ndarray) -> tuple[PromptSpec, Prompt]:
    if name == "auto":
        return PromptSpec(auto=True), Prompt()
    if name == "point":
        click = follow(oracle_first, points=1)
        return PromptSpec(points=click.points, labels=click.labels), Prompt(click.points, click.labels)
    spec = PromptSpec(oracle_box=True, reprompt=name == "oracle-box")
    return spec, spec.first(oracle_first)


def counts(oracle: np.ndarray, pred: np.ndarray) -> dict:
    a, b = oracle.astype(bool), pred.astype(bool)
    inter, union = (a & b).sum((1, 2)), (a | b).sum((1, 2))
    per_frame = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    i, u, p, r = int(inter.sum()), int(union.sum()), int(b.sum()), int(a.sum())
    return {
        "iou": i / u if u else 1.0,
        "precision": i / p if p else 1.0,
        "recall": i / r if r else 1.0,
        "per_frame_iou": [round(float(v), 4) for v in per_frame],
    }


def run_cell(model, task: str, preset: str, size: int, frames_count: int, stride: int, out: Path, recompute: bool = False) -> dict:
    path = out / "cells" / f"{task.replace(':', '_')}-{preset}-{size}.json"
    if path.is_file() and not recompute:
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = path.with_name(path.stem + "-encoded.pt")  # frames, oracle and encodings: strategies re-run without the encoder
    if encoded.is_file():
        saved = torch.load(encoded, weights_only=False)
        rgb, oracle, policy, encode_s = saved["rgb"], saved["oracle"], saved["policy"], saved["encode_s"]
        features = [f.float() for f in saved["features"]]
    else:
        rgb, oracle, policy = episode(task, preset, size, frames_count * stride)
        rgb, oracle = rgb[::stride][:frames_count], oracle[::stride][:frames_count]
        encoder = SamSegmenter(model, PromptSpec(), batch_size=1)
        start = time.perf_counter()
        features = [f for t in range(len(rgb)) for f in encoder.encode(rgb[t : t + 1])]
        encode_s = (time.perf_counter() - start) / len(rgb)
        with atomic_file(encoded) as f:
            torch.save({"rgb": rgb, "oracle": oracle, "policy": policy, "encode_s": encode_s, "features": [x.half() for x in features]}, f)
    cell = {
        "task": task,
        "preset": preset,
        "size": size,
        "frames": len(rgb),
        "stride": stride,
        "policy": policy,
        "encode_s_per_frame": encode_s,
        "strategies": {},
    }
    for name in STRATEGIES:
        spec, first = strategy_spec(name, oracle[0])
        chain = Encoded(model, spec, features)
        start = time.perf_counter()
        pred = chain.segment(rgb, Track(first))
        decode_s = (time.perf_counter() - start) / len(rgb)
        cell["strategies"][name] = {**counts(oracle, pred), "s_per_frame": encode_s + decode_s, "reprompts": chain.reprompts, "held": chain.held}
        np.savez_compressed(path.with_name(path.stem + f"-{name}.npz"), rgb=rgb, oracle=oracle, pred=pred)
    atomic_write_json(path, cell)
    return cell


def table(cells: list[dict]) -> str:
    lines = [
        "| task | preset | px | frames | " + " | ".join(f"{s} IoU / P / R" for s in STRATEGIES) + " | s/frame (enc + oracle-box, auto) |",
        "|---|---|---|---|" + "---|" * len(STRATEGIES) + "---|",
    ]
    for c in cells:
        row = [c["task"], c["preset"], str(c["size"]), f"{c['frames']}×{c['stride']}"]
        for s in STRATEGIES:
            m = c["strategies"][s]
            row.append(f"{m['iou']:.2f} / {m['precision']:.2f} / {m['recall']:.2f}")
        st = c["strategies"]
        row.append(f"{st['oracle-box']['s_per_frame']:.1f}, {st['auto']['s_per_frame']:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    means = [np.mean([c["strategies"][s]["iou"] for c in cells]) for s in STRATEGIES]
    lines.append("| **mean IoU** | | | | " + " | ".join(f"**{m:.2f}**" for m in means) + " | |")
    return "\n".join(lines)


def worst_pictures(cells: list[dict], out: Path, pictures: Path | None, doc: Path | None) -> list[str]:
    # The two worst cells with the best-informed prompt (where the model itself fails), and the worst with no human.
    by = lambda s: sorted(((c["strategies"][s]["iou"], c, s) for c in cells), key=lambda item: item[0])  # noqa: E731
    pairs = by("oracle-box")[:2] + by("auto")[:1]
    written = []
    for iou, c, s in pairs:
        stem = f"{c['task'].replace(':', '_')}-{c['preset']}-{c['size']}"
        saved = np.load(out / "cells" / f"{stem}-{s}.npz")
        order = np.argsort(c["strategies"][s]["per_frame_iou"])[:6]
        png = worst_frames_picture([(saved["rgb"][t], saved["oracle"][t], saved["pred"][t]) for t in sorted(order)], scale=1)
        target = (pictures or out) / f"mask-quality-worst-{stem}-{s}.png"
        atomic_write_bytes(target, png)
        where = os.path.relpath(target, doc.parent) if doc is not None else str(target)
        written.append(
            f"\n\n![{c['task']} {c['preset']} {c['size']} px, {s}: IoU {iou:.2f}]({where})\n{c['task']} `{c['preset']}` {c['size']} px, {s}: IoU {iou:.2f}"
        )
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--sizes", default="128", help="frame sizes in pixels, e.g. 64,128")
    parser.add_argument("--frames", type=int, default=10, help="frames per cell")
    parser.add_argument("--stride", type=int, default=4, help="keep every stride-th step")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--doc", type=Path, help="a Markdown file whose table between the mask-quality markers is replaced")
    parser.add_argument("--pictures", type=Path, help="folder for the worst-frames pictures (default: --out)")
    parser.add_argument("--recompute", action="store_true", help="re-run the strategies of finished cells (from their saved encodings)")
    parser.add_argument("--table-only", action="store_true", help="only write the table of the cells already finished")
    parser.add_argument("--checkpoint", help="MobileSAM weights (default: the fetched file)")
    args = parser.parse_args()
    torch.manual_seed(0)
    cells = []
    if args.table_only:
        cells = [json.loads(p.read_text()) for p in sorted((args.out / "cells").glob("*.json"))]
    model = None if args.table_only else load_mobile_sam(Path(args.checkpoint) if args.checkpoint else cached_weights("mobile_sam"))
    for size in (int(s) for s in args.sizes.split(",")) if model is not None else ():
        for task in args.tasks.split(","):
            for preset in args.presets.split(","):
                cell = run_cell(model, task, preset, size, args.frames, args.stride, args.out, args.recompute)
                st = cell["strategies"]
                print(
                    f"{task} {preset} {size}px: "
                    + ", ".join(f"{s} {st[s]['iou']:.3f}" for s in STRATEGIES)
                    + f" ({cell['encode_s_per_frame']:.1f} s/frame to encode)",
                    flush=True,
                )
                cells.append(cell)
    order = {p: i for i, p in enumerate(PRESETS)}
    cells.sort(key=lambda c: (c["size"], TASKS.index(c["task"]) if c["task"] in TASKS else 99, order.get(c["preset"], 99)))
    text = table(cells)
    pictures = worst_pictures(cells, args.out, args.pictures, args.doc)
    text += "\n\nWorst frames (rows: frame / oracle / MobileSAM) of the two worst cells with oracle-box and the worst with auto: " + "".join(pictures)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    if args.doc is not None:
        doc = args.doc.read_text()
        if START not in doc or END not in doc:
            raise SystemExit(f"{args.doc} has no {START} ... {END} markers")
        head, rest = doc.split(START, 1)
        args.doc.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    main()
