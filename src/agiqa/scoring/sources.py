"""What to score, as a stream: image files and folders, CSV/Parquet lists, WebDataset `.tar` shards.

Every input becomes a `ScoreItem` (a unique `key`, where its bytes are, its prompt) in one deterministic order, so
that a run can be cut into numbered blocks, each block scored by whichever process owns it, and a re-run finds the
same blocks again. Nothing is decoded here; items only say where the bytes are.

- folders: walked recursively, entries sorted by name at every level (the order of sorting the full paths), image
  suffixes only; a file named directly is taken whatever its suffix. key = the path as found.
- lists (`.csv`, `.tsv`, `.parquet`): column `image` (a path; relative paths are relative to the list's folder) and
  optionally `prompt`; read in record batches (pyarrow), never whole. key = the resolved path.
- WebDataset shards (`.tar`, uncompressed): samples are files sharing a key (`000012.jpg`, `000012.txt`, ...), split
  by webdataset's own rule (`base_plus_ext`); the prompt comes from a `.txt` sidecar or the `prompt` (else
  `caption`, `text`) field of a `.json` one. The shard is indexed by its tar headers, so a worker reads only the
  samples it scores. key = `<shard path>#<sample key>`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agiqa.errors import AgiqaError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
LIST_SUFFIXES = {".csv", ".tsv", ".parquet"}
PROMPT_FIELDS = ("prompt", "caption", "text")


@dataclass(frozen=True)
class TarMember:
    """Where one file of a tar shard lies: the shard, the data offset and size."""

    tar: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.tar, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise OSError(f"truncated in {self.tar}: {len(data)} of {self.size} bytes")
        return data


@dataclass(frozen=True)
class ScoreItem:
    """One input: `key` names it in the output; `image` is a path or a `TarMember` (None: the sample has no image);
    `prompt` is text, a `TarMember` of a `.txt` (or, with `prompt_is_json`, `.json`) sidecar, or None; `error` says
    why an input found while listing cannot be scored at all (a damaged shard)."""

    key: str
    image: str | TarMember | None
    prompt: str | TarMember | None = None
    prompt_is_json: bool = False
    error: str | None = None

    def read_prompt(self) -> str | None:
        """The prompt text (sidecars are read here, in the process that scores the item)."""
        if not isinstance(self.prompt, TarMember):
            return self.prompt
        data = self.prompt.read().decode("utf-8", errors="replace")
        if not self.prompt_is_json:
            return data.strip()
        try:
            meta = json.loads(data)
        except ValueError:
            return None
        return next((str(meta[f]) for f in PROMPT_FIELDS if isinstance(meta, dict) and f in meta), None)


def walk_images(folder: str | os.PathLike) -> Iterator[str]:
    """Image files under `folder`, depth first, entries sorted by name (= sorted full paths), as a stream."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as err:
        raise AgiqaError(f"cannot list {folder}: {err}") from err
    for entry in entries:
        if entry.is_dir():
            yield from walk_images(entry.path)
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            yield entry.path


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly, plus every image file under the given folders (in `walk_images` order)."""
    return [Path(file) for path in paths for file in (walk_images(path) if os.path.isdir(path) else [path])]


def iter_items(paths: Iterable[str | os.PathLike], prompts: dict[str, str] | None = None,
               prompt: str | None = None) -> Iterator[ScoreItem]:
    """Every input named by `paths` (files, folders, lists, shards), in a fixed order.

    `prompts` maps an image path or file name to its prompt (for files and folders); `prompt` is used for every
    item without one of its own.
    """
    for path in map(os.fspath, paths):
        suffix = Path(path).suffix.lower()
        if os.path.isdir(path):
            files = walk_images(path)
        elif suffix in LIST_SUFFIXES:
            yield from _with_default(iter_list(path), prompt)
            continue
        elif suffix == ".tar":
            yield from _with_default(iter_shard(path), prompt)
            continue
        else:
            files = iter([path])
        for file in files:
            own = prompts.get(file, prompts.get(os.path.basename(file))) if prompts else None
            yield ScoreItem(file, file, own if own is not None else prompt)


def _with_default(items: Iterator[ScoreItem], prompt: str | None) -> Iterator[ScoreItem]:
    for item in items:
        yield item if item.prompt is not None or prompt is None else dataclasses.replace(item, prompt=prompt)


def iter_list(path: str) -> Iterator[ScoreItem]:
    """Rows of a CSV/TSV/Parquet list with an `image` column (and optionally `prompt`), batch by batch."""
    folder = os.path.dirname(path)
    for batch in _list_batches(path):
        columns = batch.schema.names
        if "image" not in columns:
            raise AgiqaError(f"{path}: no `image` column (columns: {columns})")
        images = batch.column("image").to_pylist()
        texts = batch.column("prompt").to_pylist() if "prompt" in columns else [None] * len(images)
        for row, (image, text) in enumerate(zip(images, texts)):
            if not image:
                raise AgiqaError(f"{path}: empty `image` in a row (batch row {row})")
            resolved = image if os.path.isabs(image) else os.path.join(folder, image)
            yield ScoreItem(resolved, resolved, None if text is None else str(text))


def _list_batches(path: str):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.lower().endswith(".parquet"):
        yield from pq.ParquetFile(path).iter_batches(batch_size=65536)
        return
    strings = {"image": pa.string(), "prompt": pa.string()}
    options = pacsv.ParseOptions(delimiter="\t" if path.lower().endswith(".tsv") else ",")
    reader = pacsv.open_csv(path, parse_options=options, convert_options=pacsv.ConvertOptions(
        column_types=strings, strings_can_be_null=False))
    yield from reader


def iter_shard(path: str) -> Iterator[ScoreItem]:
    """Samples of an uncompressed WebDataset tar, in tar order, from its headers only. A shard that cannot be read
    to its end gives its readable samples and one error item `<path>#` for the rest."""
    from webdataset.tariterators import base_plus_ext

    members, damage = _tar_members(path)
    samples: dict[str, dict[str, TarMember]] = {}
    for name, member in members:
        key, suffix = base_plus_ext(name)
        if key is not None:
            samples.setdefault(key, {})[suffix.lower()] = member
    for key, files in samples.items():
        image = next((member for suffix, member in files.items()
                      if "." + suffix.split(".")[-1] in IMAGE_SUFFIXES), None)
        text = files.get("txt") or files.get("json")
        yield ScoreItem(f"{path}#{key}", image, text, prompt_is_json="txt" not in files and text is not None,
                        error=None if image is not None else "sample has no image file")
    if damage:
        yield ScoreItem(f"{path}#", None, error=damage)


def _tar_members(path: str) -> tuple[list[tuple[str, TarMember]], str | None]:
    """(name, member) of the shard's regular files, and why reading stopped early (None: read to the end)."""
    members = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if info.isreg():
                    members.append((info.name, TarMember(path, info.offset_data, info.size)))
            end = tar.offset
    except (OSError, tarfile.TarError) as err:
        return members, f"shard unreadable after {len(members)} file(s) ({type(err).__name__}: {err})"
    if _has_data_after(path, end):  # tarfile stops quietly at a cut-off header
        return members, f"shard unreadable after {len(members)} file(s) (a damaged header at byte {end})"
    return members, None


def _has_data_after(path: str, offset: int) -> bool:
    """True when anything but the zero blocks that end a tar follows `offset`."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(1 << 20):
            if chunk.strip(b"\0"):
                return True
    return False


def block_digest(items: list[ScoreItem]) -> str:
    """Identity of a block of inputs: the same keys in the same order give the same digest."""
    digest = hashlib.sha1()
    for item in items:
        digest.update(item.key.encode("utf-8", errors="surrogateescape") + b"\n")
    return digest.hexdigest()
