"""The dataset card (README.md with YAML metadata) that `masklam publish` writes from info.json."""

from __future__ import annotations

from typing import Any

from masklam.data.export import PARQUET, features_of, mask_column

# The Hub's size categories, by number of rows (frames of the Parquet view).
SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
]


def size_category(rows: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1T")


def card_yaml(info: dict[str, Any], license_id: str, pretty_name: str) -> str:
    """The card's front matter, through huggingface_hub's card data and `datasets`' feature description."""
    from datasets import DatasetInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    suite, task = info["env"]["env_id"].split(":", 1)
    data_files = [
        {"split": split, "path": f"{PARQUET}/{split}/*.parquet"}
        for split, entry in info["splits"].items()
        if entry["shards"] > 0  # a pattern that matches no file is an error for `datasets`
    ]
    card = DatasetCardData(
        license=license_id,
        pretty_name=pretty_name,
        task_categories=["robotics"],
        tags=["masklam", "latent-action-models", "robotics", "segmentation-masks", "distractors", suite, task],
        # the view's rows: every split's frames (info.json counts a chunk boundary once, as the view does)
        size_categories=[size_category(sum(entry["frames"] for entry in info["splits"].values()))],
        configs=[{"config_name": "default", "data_files": data_files}],
    )
    DatasetInfosDict({"default": DatasetInfo(features=features_of(info))}).to_dataset_card_data(card)
    return f"---\n{card.to_yaml()}\n---\n"


def feature_rows(info: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(column, type, description) for every column of the Parquet view."""
    rows = [
        ("episode", "int64", "episode index within the split"),
        ("frame", "int64", "frame index within the episode (an episode of T steps has T + 1 frames)"),
        ("labelled", "bool", "whether the episode's actions are stored (false: `action` is NaN)"),
    ]
    for name, feature in sorted(info["features"].items()):
        shape = feature["shape"]
        kind = "image (PNG)" if name == "rgb" else f"{feature['dtype']}{shape if shape else ''}"
        rows.append((name, kind, feature.get("description", "").replace(" (readers return no action for those)", "")))
    for source, entry in sorted(info["mask_sources"].items()):
        what = entry.get("description") or entry.get("kind") or source
        rows.append((mask_column(source), "image (PNG, 0/1)", f"agent mask '{source}': {what}"))
    return rows


def dataset_card(info: dict[str, Any], repo_id: str, license_id: str, native_layout: str, picture: str | None) -> str:
    """README.md for the Hub: YAML metadata, what the data is, how to load it, and its files."""
    name = repo_id.split("/", 1)[1]
    env, splits = info["env"], info["splits"]
    distractors = env["distractors"]
    active = [
        label
        for label, on in (
            ("dynamic background", distractors["background"]),
            (f"camera shake {distractors['camera_scale']}", distractors["camera_scale"]),
            (f"colour drift {distractors['color_scale']}", distractors["color_scale"]),
            (f"{distractors['objects']} moving objects", distractors["objects"]),
        )
        if on
    ]
    size = env["render"]["size"]
    parts = [card_yaml(info, license_id, name), f"# {name}\n"]
    parts.append(
        f"Rollouts of `{env['env_id']}` rendered at {size}x{size} px with visual distractors "
        f"({', '.join(active) or 'none'}), agent masks from {len(info['mask_sources'])} source(s) "
        f"({', '.join(sorted(info['mask_sources']))}), and actions for the labelled episodes. "
        f"Collected and published with masklam "
        f"(masklam {info.get('masklam_version', '?')}, schema {info['schema_version']}).\n"
    )
    if picture:
        parts.append(f"![frames above their agent mask]({picture})\n")
    parts.append("| split | episodes | labelled episodes | frames (rows) | mean return |\n|---|---|---|---|---|")
    for split, entry in splits.items():
        mean = entry.get("mean_return")
        parts.append(f"| {split} | {entry['episodes']} | {entry['labelled_episodes']} | {entry['frames']} | {'-' if mean is None else f'{mean:.1f}'} |")
    parts.append("\n## Columns\n\nOne row per frame (Parquet files under `parquet/<split>/`).\n")
    parts.append("| column | type | description |\n|---|---|---|")
    parts += [f"| `{column}` | {kind} | {text} |" for column, kind, text in feature_rows(info)]
    parts.append(
        "\nMasks are lossless (PNG of 0/1 values: they look black in image viewers; multiply by 255 to see them). "
        "`action` is NaN at an episode's final frame (it has no transition) and wherever `labelled` is false.\n"
    )
    parts.append(
        "## Loading\n\n```python\nfrom datasets import load_dataset\n\n"
        f'frames = load_dataset("{repo_id}", split="train").with_format("numpy")\n'
        'row = frames[0]  # row["rgb"]: uint8 (H, W, 3), row["mask_<source>"]: uint8 (H, W)\n```\n\n'
        "Training with masklam streams the native shards straight from the Hub, or from a local copy:\n\n"
        f"```bash\nmasklam train lam --trainer masklam-small --data hf://datasets/{repo_id} --out runs/masklam\n"
        f"masklam pull {repo_id} --out data/{name}   # resumable download into masklam's local layout\n```\n"
    )
    parts.append(
        "## Files\n\n"
        f"- `info.json`, `collect.json`, `index/`: masklam's dataset description, the command that made it, "
        "and each shard's records.\n"
        f"- {native_layout}\n"
        "- `parquet/<split>/shard-*.parquet`: the same frames and masks, one row per frame, for `datasets`.\n\n"
        "The layout is documented in masklam's docs/dataset-format.md.\n"
    )
    return "\n".join(parts)
