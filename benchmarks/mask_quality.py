"""Mask quality of pretrained MobileSAM against the simulator's oracle: tasks x distractor presets x prompting
strategies, at a frame size you choose; writes a Markdown table (and, with --doc, puts it into docs/segment.md).

    masklam weights fetch mobile_sam
    OMP_NUM_THREADS=1 python benchmarks/mask_quality.py --frames 10 --stride 4 --sizes 128 --out /tmp/mq --doc docs/segment.md

A cell is one task, preset and size: ``--episodes`` episodes (expert policy, each with its own background
video) are collected, the first ``frames x stride`` steps of each are kept every ``stride``-th (a slower frame
rate, so a few frames span the first few dozen steps, where the chains drift), every frame is encoded once, and
each strategy runs its prompt chain on those encodings:

- ``oracle-box``: each episode's first frame prompted with the box of its oracle mask (one click per episode,
  emulated), re-prompting when the followed mask jumps or drifts;
- ``oracle-box-noreprompt``: the same, re-prompting only on an empty mask (masklam before re-prompting);
- ``point``: one positive click on each episode's first frame, the oracle mask's deepest pixel (a person's click);
- ``auto``: no human: ``--prompt auto`` (masklam.segment.prompts.PromptChain.auto_prompt);
- ``one-click``: one click for the whole cell (``masklam segment --on``; masklam.segment.marked): the box of the
  first episode's first oracle mask; the teacher follows it over that episode's first MARK_RUN kept frames, a
  proposer learns the agent from them, and every episode's chain starts and re-prompts from its proposals, with
  the appearance check on;
- ``one-click-nolook``: the same without the appearance check (what the check adds).

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
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from masklam.atomic import atomic_file, atomic_write_bytes, atomic_write_json
from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.errors import UsageError
from masklam.segment.compare import worst_frames_picture
from masklam.segment.distill import DistillConfig
from masklam.segment.marked import MARK_RUN, Appearance, MarkedSegmenter, train_proposer
from masklam.segment.prompts import Mark, Prompt, PromptSpec, Track, follow
from masklam.segment.sam import SamSegmenter
from masklam.segment.ultralytics_backend import load_mobile_sam
from masklam.segment.weights import cached_weights

TASKS = ("dmc:cheetah-run", "dmc:walker-run", "dmc:hopper-hop", "dmc:finger-spin", "metaworld:push-v3", "metaworld:door-open-v3")
PRESETS = ("none", "low", "hard", "extreme")
STRATEGIES = ("oracle-box", "oracle-box-noreprompt", "point", "auto", "one-click", "one-click-nolook")
PER_EPISODE = STRATEGIES[:4]  # prompted on each episode's first frame; the one-click ones once per cell


class Encoded(SamSegmenter):
    """A segmenter whose frames were encoded already: the strategies share one encoder pass."""

    def __init__(self, model, prompts: PromptSpec, features: list) -> None:
        super().__init__(model, prompts, batch_size=1)
        self.cached = features

    def features(self, frames):
        return iter(self.cached[: len(frames)])


def episodes(task: str, preset: str, size: int, steps: int, count: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    root = Path(tempfile.mkdtemp(prefix="mask-quality-")) / "data"
    env = EnvSpec(task, RenderSpec(size=size), distractor_preset(preset), episode_steps=steps)
    try:
        collect(CollectConfig(env=env, episodes=count, test_episodes=0, policy="expert", seed=7), root, show_progress=False)
        policy = "expert"
    except UsageError:  # no expert for this task: a random policy still shows the agent
        collect(CollectConfig(env=env, episodes=count, test_episodes=0, seed=7), root, show_progress=False)
        policy = "random"
    records = list(open_dataset(root).records("train"))
    return [r.steps["rgb"] for r in records], [r.masks["oracle"] for r in records], policy


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


def one_click(model, rgb: list[np.ndarray], oracle: list[np.ndarray], features: list[list]) -> dict[str, tuple[list, Counter]]:
    """Masks of every episode from one emulated click, the box of the first episode's first oracle mask, with the
    appearance check (``one-click``) and without it (``one-click-nolook``); one proposer serves both."""
    click = PromptSpec(oracle_box=True).first(oracle[0][0])
    marked_frames = rgb[0][:MARK_RUN]
    marked = Encoded(model, PromptSpec(), features[0]).segment(marked_frames, Track(click))
    proposer = train_proposer(marked_frames, marked, DistillConfig(frames=10), show_progress=False)
    results = {}
    for name, appearance in (("one-click", Appearance(marked_frames, marked)), ("one-click-nolook", None)):
        pred, tally = [], Counter()
        for frames, encoded in zip(rgb, features):
            teacher = Encoded(model, PromptSpec(), encoded)
            pred.append(teacher.segment(frames, MarkedSegmenter(teacher, proposer, appearance, Mark("train", 0, 0, click)).track(frames)))
            tally.update(teacher.counts)
        results[name] = pred, tally
    return results


def run_cell(model, task: str, preset: str, size: int, frames_count: int, stride: int, episode_count: int, out: Path, recompute: bool = False) -> dict:
    stem = f"{task.replace(':', '_')}-{preset}-{size}" + (f"-e{episode_count}" if episode_count > 1 else "")
    path = out / "cells" / f"{stem}.json"
    if path.is_file() and not recompute:
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = path.with_name(stem + "-encoded.pt")  # frames, oracle and encodings: strategies re-run without the encoder
    if encoded.is_file():
        saved = torch.load(encoded, weights_only=False)
        rgb, oracle, policy, encode_s = saved["rgb"], saved["oracle"], saved["policy"], saved["encode_s"]
        features = [[f.float() for f in episode] for episode in saved["features"]]
    else:
        rgb, oracle, policy = episodes(task, preset, size, frames_count * stride, episode_count)
        rgb, oracle = [x[::stride][:frames_count] for x in rgb], [x[::stride][:frames_count] for x in oracle]
        encoder = SamSegmenter(model, PromptSpec(), batch_size=1)
        start = time.perf_counter()
        features = [[f for t in range(len(x)) for f in encoder.encode(x[t : t + 1])] for x in rgb]
        encode_s = (time.perf_counter() - start) / sum(len(x) for x in rgb)
        with atomic_file(encoded) as f:
            halves = [[x.half() for x in episode] for episode in features]
            torch.save({"rgb": rgb, "oracle": oracle, "policy": policy, "encode_s": encode_s, "features": halves}, f)
    cell = {
        "task": task,
        "preset": preset,
        "size": size,
        "episodes": len(rgb),
        "frames": len(rgb[0]),
        "stride": stride,
        "policy": policy,
        "encode_s_per_frame": encode_s,
        "strategies": {},
    }
    frame_count = sum(len(x) for x in rgb)
    results = one_click(model, rgb, oracle, features)  # its time is a proposer's training, not per frame: not timed
    for name in PER_EPISODE:
        start = time.perf_counter()
        pred, tally = [], Counter()
        for frames, truth, encoded in zip(rgb, oracle, features):
            spec, first = strategy_spec(name, truth[0])
            chain = Encoded(model, spec, encoded)
            pred.append(chain.segment(frames, Track(first)))
            tally.update(chain.counts)
        results[name] = pred, tally
        cell["strategies"][name] = {"s_per_frame": encode_s + (time.perf_counter() - start) / frame_count}
    truth = np.concatenate(oracle)
    for name in STRATEGIES:
        pred, tally = np.concatenate(results[name][0]), results[name][1]
        cell["strategies"][name] = {**cell["strategies"].get(name, {}), **counts(truth, pred), **tally}
        np.savez_compressed(path.with_name(f"{stem}-{name}.npz"), rgb=np.concatenate(rgb), oracle=truth, pred=pred)
    atomic_write_json(path, cell)
    return cell


def cell_stem(cell: dict) -> str:
    episodes = cell.get("episodes", 1)  # cells written before --episodes held one
    return f"{cell['task'].replace(':', '_')}-{cell['preset']}-{cell['size']}" + (f"-e{episodes}" if episodes > 1 else "")


def table(cells: list[dict]) -> str:
    shown = [s for s in STRATEGIES if any(s in c["strategies"] for c in cells)]
    clicks = "one-click" in shown
    lines = [
        "| task | preset | px | episodes × frames × stride | "
        + " | ".join(f"{s} IoU / P / R" for s in shown)
        + (" | one-click re-prompted / slid" if clicks else "")
        + " | s/frame (enc + oracle-box, auto) |",
        "|---|---|---|---|" + "---|" * (len(shown) + clicks) + "---|",
    ]
    for c in cells:
        st = c["strategies"]
        row = [c["task"], c["preset"], str(c["size"]), f"{c.get('episodes', 1)}×{c['frames']}×{c['stride']}"]
        row += [f"{st[s]['iou']:.2f} / {st[s]['precision']:.2f} / {st[s]['recall']:.2f}" if s in st else "–" for s in shown]
        if clicks:
            row.append(f"{st['one-click']['reprompted']} / {st['one-click']['slid']}" if "one-click" in st else "–")
        row.append(f"{st['oracle-box']['s_per_frame']:.1f}, {st['auto']['s_per_frame']:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    means = [np.mean([c["strategies"][s]["iou"] for c in cells if s in c["strategies"]]) for s in shown]
    lines.append("| **mean IoU** | | | | " + " | ".join(f"**{m:.2f}**" for m in means) + " |" + " |" * clicks + " |")
    return "\n".join(lines)


def worst_pictures(cells: list[dict], out: Path, pictures: Path | None, doc: Path | None) -> list[str]:
    # The two worst cells with the best-informed prompt (where the model itself fails), and the worst with no human.
    by = lambda s: sorted(((c["strategies"][s]["iou"], c, s) for c in cells), key=lambda item: item[0])  # noqa: E731
    pairs = by("oracle-box")[:2] + by("auto")[:1]
    written = []
    for iou, c, s in pairs:
        stem = cell_stem(c)
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
    parser.add_argument("--episodes", type=int, default=2, help="episodes per cell (each with its own background video)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--doc", type=Path, help="a Markdown file whose table between the --marker markers is replaced")
    parser.add_argument("--marker", default="mask-quality", help="the doc's table markers: <!-- MARKER:start --> ... <!-- MARKER:end -->")
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
                cell = run_cell(model, task, preset, size, args.frames, args.stride, args.episodes, args.out, args.recompute)
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
        START, END = f"<!-- {args.marker}:start -->", f"<!-- {args.marker}:end -->"
        if START not in doc or END not in doc:
            raise SystemExit(f"{args.doc} has no {START} ... {END} markers")
        head, rest = doc.split(START, 1)
        args.doc.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    os.environ.setdefault("YOLO_OFFLINE", "1")
    main()
