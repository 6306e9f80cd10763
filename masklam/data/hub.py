"""`masklam publish` and `masklam pull`: datasets on the Hugging Face Hub.

Publishing first builds the folder to upload (the *stage*, beside the dataset by default)::

    STAGE/
      README.md  view.png                 dataset card (YAML metadata from info.json) and its picture
      info.json  collect.json  index/     as in the dataset
      segment/                            how each segmented mask source was made, when there are any
      <split>/  masks/                    WebDataset shards, as in the dataset
      data.zarr/<split>/shard-N.zip       Zarr shards, each zipped (--zarr-layout zip), or
      data.zarr/<split>/shard-N/          ... as folders (--zarr-layout dir)
      parquet/<split>/shard-N.parquet     one row per frame, for `datasets` (see masklam.data.export)

Native files are hard links into the dataset (copies across filesystems), so the stage costs the Parquet view
and the zips only; rebuilding it redoes only what changed. The stage is uploaded with huggingface_hub's
resumable folder upload (re-running the command resumes it), shards first and the card with info.json last, so a
reader that finds info.json on the Hub finds every shard it lists. The token comes from huggingface_hub
(HF_TOKEN, or `hf auth login`); masklam never reads, prints or writes it.

Pulling downloads the native files (not the Parquet view) into masklam's local layout, unzipping zipped Zarr
shards, info.json last. Re-running it resumes. Streaming needs no pull: `--data hf://datasets/OWNER/NAME`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from masklam.atomic import atomic_file, atomic_write_bytes, atomic_write_json, remove_stale_temp_files
from masklam.data.dataset import INFO, Dataset, open_dataset, read_json
from masklam.data.export import PARQUET
from masklam.data.schema import SPLITS, ZARR_LAYOUTS
from masklam.data.storage import ZARR_SHARD_FILES
from masklam.data.zarr_backend import STORE, ZarrBackend
from masklam.errors import UsageError, did_you_mean, disk_full
from masklam.locks import writer_lock

REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
CARD, PICTURE, PULL_RECORD = "README.md", "view.png", "pull.json"
STAGE_MARKER = ".masklam-stage.json"  # marks a folder as a stage: only such a folder has files deleted from it
LAST = (CARD, PICTURE, INFO)  # uploaded in the final commit
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: the same shard always gives the same zip


@dataclass(frozen=True)
class PublishConfig:
    repo_id: str
    private: bool = False
    revision: str = "main"
    message: str = "Publish dataset with masklam"
    zarr_layout: str = "zip"
    license: str = "cc-by-4.0"

    def __post_init__(self) -> None:
        check_repo_id(self.repo_id)
        if self.zarr_layout not in ZARR_LAYOUTS:
            raise UsageError(f"--zarr-layout {self.zarr_layout!r}{did_you_mean(self.zarr_layout, ZARR_LAYOUTS)}: choose one of {', '.join(ZARR_LAYOUTS)}")
        if not self.revision or not self.message.strip():
            raise UsageError("--revision and --message must not be empty")


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID_RE.match(repo_id):
        raise UsageError(f"repo id {repo_id!r} must be OWNER/NAME (letters, digits, '-', '_', '.')")


def hub_imports(command: str = "publish"):
    """huggingface_hub and datasets come with the `hub` extra."""
    try:
        import datasets  # noqa: F401
        import huggingface_hub
    except ImportError:
        raise UsageError(f"masklam {command} needs the hub extra: pip install 'masklam[hub]'") from None
    return huggingface_hub


def hub_call_errors() -> tuple[type[BaseException], ...]:
    """What a failed Hub call raises: HTTP errors, connection errors, and files that could not be fetched."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # The HTTP library's own base error (connection refused, timeouts), whichever library this version uses.
    http_error = next(c for c in HfHubHTTPError.__mro__ if c.__name__ == "HTTPError" and c is not HfHubHTTPError)
    return (HfHubHTTPError, http_error, LocalEntryNotFoundError, OSError)


# --- the stage: what is uploaded --------------------------------------------------------------------------------


def default_stage(dataset_path: Path) -> Path:
    """Where the stage is built unless --stage says otherwise: DATA.publish beside the dataset."""
    return dataset_path.parent / f"{dataset_path.name}.publish"


def native_files(dataset: Dataset) -> list[str]:
    """The dataset's own files (relative POSIX paths): description, indexes, mask provenance and shards."""
    root: Path = dataset.root
    patterns = ["collect.json", INFO, "index/*/*.json", "segment/**/*"]
    if dataset.info["backend"] == "webdataset":
        patterns += [f"{split}/shard-*.tar" for split in dataset.info["splits"]]
        patterns += [f"masks/*/{split}/shard-*.tar" for split in dataset.info["splits"]]
    else:
        patterns += [f"{STORE}/**/*"]
    found = {p for pattern in patterns for p in root.glob(pattern) if p.is_file()}
    relative = (p.relative_to(root).as_posix() for p in found)
    return sorted(r for r in relative if not any(part.startswith(".") for part in r.split("/")))


def link_or_copy(source: Path, dest: Path) -> None:
    """Make ``dest`` the same file as ``source``: a hard link when possible, else an atomic copy."""
    if dest.exists() and os.path.samefile(source, dest):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.masklam-{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
        os.replace(tmp, dest)
    except OSError:  # another filesystem, or links not allowed
        tmp.unlink(missing_ok=True)
        with atomic_file(dest) as f, source.open("rb") as src:
            shutil.copyfileobj(src, f)


def folder_fingerprint(folder: Path) -> str:
    """Changes whenever a file under ``folder`` is added, removed or rewritten (writes are renames: new mtimes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def zip_folder(folder: Path, out: Path) -> None:
    """Zip a shard folder (stored, not compressed: its chunks are compressed already); kept if up to date."""
    fingerprint = folder_fingerprint(folder).encode()
    if out.is_file():
        try:
            with zipfile.ZipFile(out) as archive:
                if archive.comment == fingerprint:
                    return
        except (OSError, zipfile.BadZipFile):
            pass  # rewritten below
    with atomic_file(out) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            with path.open("rb") as src, archive.open(info, "w", force_zip64=path.stat().st_size >= 1 << 31) as dst:
                shutil.copyfileobj(src, dst)
        archive.comment = fingerprint


def native_layout_text(backend: str, zarr_layout: str) -> str:
    if backend == "webdataset":
        return "`<split>/shard-*.tar`, `masks/<source>/<split>/shard-*.tar`: WebDataset shards (frames and per-step arrays; one tar set per mask source)."
    if zarr_layout == "zip":
        return "`data.zarr/<split>/shard-*.zip`: Zarr v3 shards, each an uncompressed zip of the shard's store."
    return "`data.zarr/<split>/shard-*/`: Zarr v3 shards (diffusion_policy-style replay buffers)."


def build_stage(dataset_path: Path, stage: Path, config: PublishConfig, show_progress: bool = True) -> list[str]:
    """Build (or bring up to date) the folder `publish` uploads; returns its files' relative paths."""
    with writer_lock(stage, "publish"):  # one builder per stage
        return _build_stage(dataset_path, stage, config, show_progress)


def _build_stage(dataset_path: Path, stage: Path, config: PublishConfig, show_progress: bool = True) -> list[str]:
    from masklam.data.card import dataset_card
    from masklam.data.export import write_parquet_view
    from masklam.data.view import view

    hub_imports()
    dataset = open_dataset(dataset_path)
    if not isinstance(dataset.root, Path):
        raise UsageError(f"publish a local dataset folder, not {dataset.root}: `masklam pull` it first")
    dataset.root = dataset.root.resolve()
    stage = stage.resolve()
    if stage == dataset.root or dataset.root in stage.parents or stage in dataset.root.parents:
        raise UsageError(f"--stage {stage} and the dataset folder {dataset.root} must not hold one another")
    if stage.is_dir() and any(stage.iterdir()) and not (stage / STAGE_MARKER).is_file():
        raise UsageError(f"--stage {stage} holds other files: choose an empty or new folder")
    for split in dataset.info["splits"]:
        dataset.shards(split)  # an incomplete dataset stops here, before anything is written
    atomic_write_json(stage / STAGE_MARKER, {"dataset": str(dataset.root)})
    remove_stale_temp_files(stage)  # an interrupted build's
    files: list[str] = []
    zipped = dataset.info["backend"] == "zarr" and config.zarr_layout == "zip"
    shard_dirs: set[Path] = set()
    for relative in native_files(dataset):
        parts = PurePosixPath(relative).parts
        if zipped and parts[0] == STORE and len(parts) > 3:  # data.zarr/<split>/shard-N/...
            shard_dirs.add(dataset.root.joinpath(*parts[:3]))
            continue
        link_or_copy(dataset.root / relative, stage / relative)
        files.append(relative)
    for folder in sorted(shard_dirs):
        relative = folder.relative_to(dataset.root).as_posix() + ".zip"
        zip_folder(folder, stage / relative)
        files.append(relative)
    files += write_parquet_view(dataset, stage, show_progress)
    source = "oracle" if "oracle" in dataset.info["mask_sources"] else sorted(dataset.info["mask_sources"])[0]
    view(dataset, stage / PICTURE, split="train", episodes=3, frames=6, mask_source=source)
    layout = native_layout_text(dataset.info["backend"], config.zarr_layout)
    card = dataset_card(dataset.info, config.repo_id, config.license, layout, PICTURE)
    atomic_write_bytes(stage / CARD, card.encode())
    files += [PICTURE, CARD]
    remove_stale(stage, set(files))
    return sorted(files)


def remove_stale(stage: Path, keep: set[str]) -> None:
    """Delete files of an earlier stage that this one no longer has (huggingface_hub's .cache/ stays)."""
    for path in sorted(stage.rglob("*"), reverse=True):
        relative = path.relative_to(stage).as_posix()
        if relative in (".cache", STAGE_MARKER) or relative.startswith(".cache/"):
            continue
        if path.is_file() and relative not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


# --- upload ---------------------------------------------------------------------------------------------------


def hub_error(action: str, repo_id: str, error: Exception) -> UsageError:
    """One line for a failed Hub call. huggingface_hub's messages carry the status and URL, never the token."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        return UsageError(f"the Hub refused to {action} {repo_id} (HTTP {status}): log in with `hf auth login` or set HF_TOKEN to a token that can write to it")
    if status == 404:
        return UsageError(f"the Hub has no dataset {repo_id} (or no such revision) to {action}: check the name")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if status is None:  # no answer at all: no network, or a wrong HF_ENDPOINT
        return UsageError(
            f"could not reach the Hub to {action} {repo_id} ({first_line}): check the network and HF_ENDPOINT, then re-run the same command to resume"
        )
    return UsageError(f"could not {action} {repo_id} on the Hub: {first_line}; re-run the same command to resume")


def publish(dataset_path: Path, config: PublishConfig, stage: Path | None = None, show_progress: bool = True, echo: Callable[[str], None] = print) -> str:
    """Build the stage and upload it to the dataset repo ``config.repo_id``; returns the repo's URL."""
    huggingface_hub = hub_imports()
    if huggingface_hub.get_token() is None:
        raise UsageError("no Hugging Face token: log in with `hf auth login`, or set HF_TOKEN")
    dataset_path = Path(dataset_path)
    stage = Path(stage) if stage is not None else default_stage(dataset_path)
    with writer_lock(stage, "publish"):  # held through the upload: another publish would rebuild the stage under it
        return _publish_stage(huggingface_hub, dataset_path, stage, config, show_progress, echo)


def _publish_stage(huggingface_hub, dataset_path: Path, stage: Path, config: PublishConfig, show_progress: bool, echo: Callable[[str], None]) -> str:
    files = _build_stage(dataset_path, stage, config, show_progress)
    echo(f"staged {len(files)} files in {stage}")
    if not show_progress:
        huggingface_hub.utils.disable_progress_bars()
    api = huggingface_hub.HfApi()
    upload = dict(repo_id=config.repo_id, repo_type="dataset", folder_path=stage, revision=config.revision)
    # Remote files under masklam's folders that the stage no longer has (a removed shard or mask source) go.
    managed = [f"{folder}/*" for folder in ("index", "segment", "masks", STORE, PARQUET, *SPLITS)]
    try:
        repo = api.create_repo(config.repo_id, repo_type="dataset", private=config.private, exist_ok=True)
        if config.revision != "main":
            api.create_branch(config.repo_id, branch=config.revision, repo_type="dataset", exist_ok=True)
        api.upload_folder(**upload, ignore_patterns=[*LAST, STAGE_MARKER], delete_patterns=managed, commit_message=f"{config.message} (shards)")
        api.upload_folder(**upload, allow_patterns=list(LAST), commit_message=config.message)
    except hub_call_errors() as error:
        raise hub_error("publish to", config.repo_id, error) from None
    return str(repo)


# --- pull -----------------------------------------------------------------------------------------------------


def is_native(path: str) -> bool:
    """Files `pull` fetches: the dataset's own, not the Parquet view or the Hub's .gitattributes."""
    return not (path.startswith("parquet/") or path in (".gitattributes", PICTURE))


def unzip_shard(archive: Path, root: Path) -> None:
    """Unpack a zipped Zarr shard into its folder (staged, then renamed into place) and delete the zip."""
    backend = ZarrBackend()
    with backend._staging(root) as tmp:
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        except (OSError, zipfile.BadZipFile) as e:
            archive.unlink(missing_ok=True)  # fetched again by the next run
            raise UsageError(f"{archive} is damaged ({e}): re-run the same `masklam pull` to fetch it again") from None
        backend._move_into_place(tmp, archive.with_suffix(""), ZARR_SHARD_FILES)
    archive.unlink()


def pull(repo_id: str, out: Path, revision: str = "main", show_progress: bool = True) -> Path:
    """Download a published dataset into ``out`` in masklam's local layout; re-running resumes."""
    check_repo_id(repo_id)
    huggingface_hub = hub_imports("pull")
    out = Path(out)
    record = out / PULL_RECORD
    origin = read_json(record, "delete it, or pull into another --out") if record.exists() else None
    if (origin or {}).get("repo_id", repo_id) != repo_id or (origin is None and out.is_dir() and any(out.iterdir())):
        raise UsageError(f"{out} holds something else than a pull of {repo_id}: choose another --out")
    with writer_lock(out, "pull"):  # one download per folder: two would unzip the same shard at once
        created = not out.exists()
        atomic_write_json(record, {"repo_id": repo_id, "revision": revision})  # first: a later run resumes here
        try:
            return _pull_into(huggingface_hub, repo_id, out, revision, show_progress)
        except BaseException:
            if created:
                remove_if_nothing_came(out)
            raise


def remove_if_nothing_came(out: Path) -> None:
    """Delete a folder this pull made when no file of the dataset came down (an offline run, a wrong name): only
    pull.json and huggingface_hub's bookkeeping are in it. One holding downloads is kept, to resume."""
    cache = out / ".cache"
    others = [p for p in out.iterdir() if p not in (out / PULL_RECORD, cache)] if out.is_dir() else [None]
    downloaded = cache.is_dir() and any(p.is_file() and p.name.endswith(".incomplete") for p in cache.rglob("*"))
    if not others and not downloaded:
        shutil.rmtree(out, ignore_errors=True)


def _pull_into(huggingface_hub, repo_id: str, out: Path, revision: str, show_progress: bool) -> Path:
    record = out / PULL_RECORD
    if not show_progress:
        huggingface_hub.utils.disable_progress_bars()
    api = huggingface_hub.HfApi()
    try:
        sha = api.dataset_info(repo_id, revision=revision).sha  # pin the revision: both downloads see one commit
        remote = api.list_repo_files(repo_id, repo_type="dataset", revision=sha)
        if INFO not in remote:
            raise UsageError(f"{repo_id} has no {INFO}: it is not a masklam dataset (publish one with `masklam publish`)")
        wanted = [f for f in remote if is_native(f) and f != INFO]
        # A zip unpacked by an earlier run is not fetched again.
        todo = [f for f in wanted if not (f.endswith(".zip") and (out / f.removesuffix(".zip") / "zarr.json").is_file())]
        download = dict(repo_id=repo_id, repo_type="dataset", revision=sha, local_dir=out)
        with warnings.catch_warnings():  # its multi-line guess about free space: a real full disk is one line below
            warnings.filterwarnings("ignore", message="Not enough free disk space")
            huggingface_hub.snapshot_download(**download, allow_patterns=todo)
            for relative in todo:
                if relative.startswith(f"{STORE}/") and relative.endswith(".zip"):
                    unzip_shard(out / relative, out)
            huggingface_hub.snapshot_download(**download, allow_patterns=[INFO])  # last: present = complete
    except hub_call_errors() as error:
        if disk_full(error):  # a full disk is not the network: said as the CLI says every full disk, naming out
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out)) from error
        raise hub_error("pull", repo_id, error) from None
    atomic_write_json(record, {"repo_id": repo_id, "revision": revision, "sha": sha})
    open_dataset(out)  # a one-line error if what came down is not a readable dataset
    return out
