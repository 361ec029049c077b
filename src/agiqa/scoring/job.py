"""A whole scoring run: plan the blocks, skip the finished ones, score the rest on this process's share (one
process, `torchrun` ranks, or Ray actors), write shards as they finish, then totals.

    job = ScoreJob(item_source(["images/", "list.parquet"]), ShardStore("scores/"), setup, block_size=1024)
    totals = job.run(scorer, num_workers=4)
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from agiqa.scoring.progress import Progress
from agiqa.scoring.shards import ShardStore
from agiqa.scoring.stream import BlockDataset, BlockPlan, BlockReader, loader, plan_blocks, score_blocks
from agiqa.scoring.sources import ScoreItem


class ScoreJob:
    """Inputs (a callable listing `ScoreItem`s), an output store, the setup that must match on resume."""

    def __init__(self, items: Callable[[], Iterable[ScoreItem]], store: ShardStore, setup: dict,
                 block_size: int = 1024, log_every: float = 30.0):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.items, self.store, self.block_size, self.log_every = items, store, block_size, log_every
        self.setup = {**setup, "block_size": block_size}
        self.plan: list[BlockPlan] = []
        self.todo: dict[int, str] = {}

    def prepare(self) -> None:
        """Start or check the output folder, list the inputs once and find the blocks still to score."""
        self.store.start(self.setup)
        self.load_plan()

    def plan_inputs(self) -> None:
        """List the inputs once into blocks; writes nothing (so a run can be checked before its output exists)."""
        self.plan = plan_blocks(self.items(), self.block_size)

    def open_store(self) -> bool:
        """After `plan_inputs`: start or check the output folder and find the blocks still to score. True when the
        output is new (see `ShardStore.discard_if_unscored` for a run that then fails before scoring anything)."""
        created = self.store.start(self.setup)
        self.todo = self.store.todo(self.plan)
        return created

    def load_plan(self) -> None:
        """`prepare` for a process that did not start the folder (another rank): plan and todo only."""
        self.plan_inputs()
        self.todo = self.store.todo(self.plan)

    @property
    def total(self) -> int:
        return sum(block.size for block in self.plan)

    @property
    def done(self) -> int:
        """Inputs of blocks that already have their shard (scored by an earlier run of the same command)."""
        return sum(block.size for block in self.plan if block.index not in self.todo)

    def progress(self, label: str = "", share: float = 1.0) -> Progress:
        done = self.done
        return Progress(round((self.total - done) * share) + done, done, self.log_every, label=label)

    def run(self, scorer, num_workers: int = 0, rank: int = 0, world: int = 1,
            heatmaps: str | os.PathLike | None = None) -> None:
        """Score this process's blocks (`index % world == rank`, then split among `num_workers` decode workers);
        with `heatmaps` (a folder), draw each scored image's heat map there (see `score_blocks`)."""
        reader = BlockReader.for_scorer(scorer, keep_images=heatmaps is not None)
        dataset = BlockDataset(self.items, self.todo, self.block_size, reader, rank, world)
        progress = self.progress(f"rank {rank}" if world > 1 else "", share=1 / world)
        try:
            batches = loader(dataset, num_workers, pin_memory=scorer.device.type == "cuda")
            score_blocks(scorer, batches, self.store.write, progress.update, heatmaps)
        finally:
            progress.close()

    def finish(self) -> dict:
        """Totals of the whole output once every block has its shard (`_SUCCESS.json`); raises if some are missing."""
        from agiqa.errors import AgiqaError

        missing = self.store.todo(self.plan)
        if missing:
            raise AgiqaError(f"{len(missing)} block(s) of {self.store.folder} have no shard yet (e.g. block "
                             f"{min(missing)}); run the same command again to finish them")
        failed = sum(len(batch) - batch.column("error").null_count for batch in self.store.batches(["error"]))
        totals = {"images": self.total, "scored": self.total - failed, "failed": failed, "blocks": len(self.plan),
                  "shards": [os.path.basename(path) for path in self.store.shards()]}
        self.store.complete(totals)
        return totals
