"""Scores on disk as they are made: one shard per block, written atomically, so a killed run resumes exactly.

An output folder holds `_manifest.json` (the setup: model, weights, precision, ... and the block size), one
`part-<block>-<digest>.<format>` per finished block (digest = first 12 hex digits of the block's key digest), and
`_SUCCESS.json` (totals) once every block is there. A shard is written to a temporary name and renamed, so it is
either whole or absent: a re-run skips the blocks that have a shard, writes the others, and ends with exactly one
row per input. A shard of the same block with another digest means the inputs changed: refused, never mixed.
Formats: parquet (default, pyarrow), csv, jsonl. Readers that skip `_`-files (pyarrow, pandas, Spark, DuckDB) read
the folder of Parquet shards as one table.
"""
from __future__ import annotations

import heapq
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from agiqa.errors import AgiqaError

FORMATS = ("parquet", "csv", "jsonl")
COLUMNS = ("image", "prompt", "score", "error")
TEXT_COLUMNS = ("image", "prompt", "error", "heatmap")
DIGEST_CHARS = 12
_SHARD = re.compile(r"^part-(\d+)-([0-9a-f]+)\.(parquet|csv|jsonl)$")


def _schema(columns=COLUMNS):
    """image, prompt, error: strings; score and any other column (gate_*, expert_*: per-expert outputs): float64."""
    import pyarrow as pa

    return pa.schema([(name, pa.string() if name in TEXT_COLUMNS else pa.float64()) for name in columns])


class ShardStore:
    """The output folder of one scoring run (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, fmt: str = "parquet"):
        if fmt not in FORMATS:
            raise AgiqaError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
        self.folder, self.format = Path(folder), fmt
        self._made_folder = False  # set by `start` when it creates the folder

    @property
    def manifest_path(self) -> Path:
        return self.folder / "_manifest.json"

    def check(self, setup: dict) -> None:
        """Refuse a folder that holds another setup's run, or that is no scoring output; writes nothing."""
        if self.manifest_path.is_file():
            try:
                saved = json.loads(self.manifest_path.read_text())
            except ValueError as err:
                raise AgiqaError(f"{self.manifest_path} is damaged ({err}); delete the folder to start again") from err
            if saved != setup:
                changed = sorted(k for k in set(saved) | set(setup) if saved.get(k) != setup.get(k))
                empty = "" if self.finished() else " (no block of it is finished)"
                raise AgiqaError(f"{self.folder} holds scores of another setup{empty} (differs in {changed}); use "
                                 "another output, or delete it to start again")
        elif self.folder.is_dir():
            other = [p.name for p in self.folder.iterdir()]
            if other:
                raise AgiqaError(f"{self.folder} is not empty and is not a scoring output ({other[:3]}...)")
        elif self.folder.exists():
            raise AgiqaError(f"{self.folder} is a file, not a folder for shards; use another output")

    def start(self, setup: dict) -> bool:
        """Create the folder or check that it holds a run of the same `setup`; drop temporaries of killed runs.
        True when this call wrote the manifest (a new output)."""
        self.check(setup)
        created = not self.manifest_path.is_file()
        if created:
            self._made_folder = not self.folder.is_dir()
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.manifest_path, json.dumps(setup, indent=1).encode())
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        return created

    def discard_if_unscored(self) -> bool:
        """Remove the manifest (and the folder, if `start` made it) while no shard holds scores, so that a run which
        failed before scoring anything leaves nothing behind that could refuse the corrected command. True when
        removed."""
        if not self.manifest_path.is_file() or self.finished():
            return False
        for stale in self.folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        if self._made_folder:
            try:
                self.folder.rmdir()
            except OSError:  # something else appeared in it: leave it
                pass
        return True

    def finished(self) -> dict[int, str]:
        """Block number -> digest prefix of every shard on disk (any format)."""
        found = {}
        for path in self.folder.iterdir() if self.folder.is_dir() else []:
            match = _SHARD.match(path.name)
            if match:
                found[int(match.group(1))] = match.group(2)
        return found

    def todo(self, plan) -> dict[int, str]:
        """Blocks of `plan` (`BlockPlan`s) without a shard, as block -> digest; a shard of other inputs is refused."""
        finished = self.finished()
        todo = {}
        for block in plan:
            saved = finished.get(block.index)
            if saved is None:
                todo[block.index] = block.digest
            elif saved != block.digest[:DIGEST_CHARS]:
                raise AgiqaError(f"{self.folder}: block {block.index} was scored for other inputs than these (the "
                                 "files or lists changed since); score them into a new output")
        return todo

    def write(self, index: int, digest: str, columns: dict[str, list]) -> Path:
        """Write one block's rows (`COLUMNS`, optionally more float columns, in the given order) atomically."""
        import pyarrow as pa

        table = pa.table(columns, schema=_schema(list(columns)))
        path = self.folder / f"part-{index:06d}-{digest[:DIGEST_CHARS]}.{self.format}"
        temporary = self.folder / f".{path.name}.{os.getpid()}.tmp"
        if self.format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, temporary)
        elif self.format == "csv":
            table.to_pandas().to_csv(temporary, index=False)
        else:
            table.to_pandas().to_json(temporary, orient="records", lines=True, force_ascii=False)
        os.replace(temporary, path)
        return path

    def shards(self) -> list[Path]:
        """Shard files in block order."""
        return sorted((p for p in self.folder.iterdir() if _SHARD.match(p.name)), key=lambda p: p.name)

    def batches(self, columns: list[str] | None = None) -> Iterator:
        """The rows of every shard as pyarrow record batches, block by block (never all in memory)."""
        for path in self.shards():
            yield from read_shard(path, columns).to_batches()

    def read(self):
        """All rows as one pandas frame (small runs)."""
        import pyarrow as pa

        batches = list(self.batches())
        return pa.Table.from_batches(batches).to_pandas() if batches else _schema().empty_table().to_pandas()

    def complete(self, totals: dict) -> None:
        _write_atomically(self.folder / "_SUCCESS.json", json.dumps(totals, indent=1).encode())


def read_shard(path: Path, columns: list[str] | None = None):
    """One shard as a pyarrow table with the output schema, whatever its format."""
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path, columns=columns)
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types=_schema(), strings_can_be_null=True))
    else:
        import pyarrow.json as pajson

        table = pajson.read_json(path)
    table = table.cast(_schema(table.column_names))
    return table.select(columns) if columns else table


def top_k(store: ShardStore, group_by: str, k: int, lower_better: bool = False):
    """The `k` best-scored rows of every `group_by` value, from the shards, one batch at a time (memory: k rows per
    group). Returns a pandas frame sorted by group (rows without a group last), then rank."""
    import pandas as pd

    best: dict[str, list] = {}
    sign = -1.0 if lower_better else 1.0
    order = 0
    for batch in store.batches(["image", group_by, "score"]):
        for image, group, score in zip(*(batch.column(i).to_pylist() for i in range(3))):
            if score is None:
                continue
            heap = best.setdefault(group, [])
            entry = (sign * score, -order, image, score)  # ties: the earlier input wins
            order += 1
            if len(heap) < k:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
    rows = [{group_by: group, "rank": rank, "image": image, "score": score}
            for group, heap in sorted(best.items(), key=lambda item: (item[0] is None, str(item[0])))
            for rank, (_, _, image, score) in enumerate(sorted(heap, reverse=True), start=1)]
    return pd.DataFrame(rows, columns=[group_by, "rank", "image", "score"])


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
