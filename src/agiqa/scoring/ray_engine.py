"""`agiqa score --engine ray`: the same blocks and shards, scored by Ray Data model actors (the `[ray]` extra).

The driver plans the blocks and skips finished ones exactly as a local run; each unfinished block becomes one row
of a Ray dataset, `map_batches` hands rows to a pool of actors that each load the model once, score the block
(decoding in the actor) and write its shard to the shared output folder. On a cluster the output folder must be
shared storage that every node sees; start with `ray job submit -- agiqa score ... --engine ray`.
"""
from __future__ import annotations

import pickle

from agiqa.scoring.job import ScoreJob
from agiqa.scoring.shards import ShardStore
from agiqa.scoring.stream import BlockReader, blocks, score_blocks


class BlockScorer:
    """A Ray actor: one model, many blocks; returns per block how many images were scored and failed."""

    def __init__(self, model, scorer_kwargs: dict, folder: str, fmt: str):
        from agiqa.scoring.scorer import Scorer

        self.scorer = Scorer(model, **scorer_kwargs)
        self.reader = BlockReader.for_scorer(self.scorer)
        self.store = ShardStore(folder, fmt)

    def __call__(self, batch: dict) -> dict:
        counts = {"block": [], "scored": [], "failed": []}
        for index, digest, payload in zip(batch["block"], batch["digest"], batch["items"]):
            tally = [0, 0]

            def count(scored: int, failed: int) -> None:
                tally[0] += scored
                tally[1] += failed

            score_blocks(self.scorer, self.reader.batches(int(index), str(digest), pickle.loads(payload)),
                         self.store.write, count)
            counts["block"].append(int(index))
            counts["scored"].append(tally[0])
            counts["failed"].append(tally[1])
        return counts


def run_on_ray(job: ScoreJob, model, scorer_kwargs: dict, actors: int = 1, gpus_per_actor: float = 0.0,
               cpus_per_actor: float = 1.0, address: str | None = None) -> None:
    """Score `job`'s unfinished blocks (after `job.prepare()`) on `actors` Ray actors; `address`: an existing
    cluster ("auto", "ray://head:10001"), None starts or joins a local instance."""
    import ray

    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    rows = [{"block": index, "digest": job.todo[index], "items": pickle.dumps(block)}
            for index, block in enumerate(blocks(job.items(), job.block_size)) if index in job.todo]
    if not rows:
        return
    # One Ray block per scoring block: no shuffle stage, so the actors may take every CPU of a small machine.
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    kwargs = {**scorer_kwargs, "device": "cuda" if gpus_per_actor > 0 else "cpu"}
    scored = dataset.map_batches(
        BlockScorer, fn_constructor_kwargs={"model": model, "scorer_kwargs": kwargs,
                                            "folder": str(job.store.folder), "fmt": job.store.format},
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus_per_actor,
        num_cpus=cpus_per_actor)
    progress = job.progress("ray")
    try:
        for row in scored.iter_rows():
            progress.update(int(row["scored"]), int(row["failed"]))
    finally:
        progress.close()
