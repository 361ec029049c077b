"""`agiqa score`: files, folders, lists, shards (+ prompts) → one row per input, streamed to resumable shards;
best-of-N per prompt; failures reported, never fatal."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from agiqa.data.images import DEFAULT_MAX_PIXELS
from agiqa.errors import AgiqaError
from agiqa.scoring.shards import FORMATS, ShardStore
from agiqa.scoring.sources import IMAGE_SUFFIXES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="score images, folders, lists or WebDataset shards with a trained model (streaming, resumable)",
        description="Score images with a model directory (a training run's model/ folder or save_pretrained output) "
        "or a registered model name with weights. Inputs stream through data-loader workers in blocks; each block is "
        "written as a shard when done, so a killed run resumes where it stopped. One row per input (image, prompt, "
        "score, gate_<expert>/expert_<expert> for mixture-of-experts models, error); unreadable inputs keep their "
        "row with the reason in `error` and make the exit code 1 "
        "(0 under torchrun, which takes a non-zero exit for a crashed rank). "
        "Several processes: torchrun --standalone --nproc_per_node N -m agiqa score ... --out DIR; a Ray cluster: "
        "--engine ray.",
    )
    parser.add_argument("model", help="model directory, a registered name such as maniqa.koniq10k, or a zero-shot "
                        "VLM: vlm:<VLM id or folder> (expected quality level 1..5, Q-Align rule) / "
                        "vlm-alignment:<...> (how well each image matches its prompt)")
    parser.add_argument("paths", nargs="+", help="image files, folders (searched recursively), lists (.csv/.tsv/"
                        ".parquet with an `image` and optional `prompt` column; relative paths are relative to the "
                        "list) and WebDataset shards (.tar; prompt from a .txt or .json sidecar)")
    parser.add_argument("--weights", help="weights file for a registered model name (official .pt or .safetensors)")
    parser.add_argument("--prompts", help="CSV with columns image,prompt (image = file name or path) for files and "
                        "folders")
    parser.add_argument("--prompt", help="one prompt for every input that has none of its own")
    parser.add_argument("--encoder", help="VLM id or directory for MA-AGIQA's semantic features")
    parser.add_argument("--features", help="feature cache of that encoder (agiqa features extract / import-official): "
                        "cached images are not encoded again; without --encoder, images not in it become error rows")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int,
                        help="data-loader processes decoding and preprocessing images (0: in the main process; "
                        "default: from the CPUs this process may use, see docs/scoring.md: 0 on 1-2 CPUs, where "
                        "workers only take CPU time from the model)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--compile", action="store_true",
                        help="run the model through torch.compile: slow first batches, faster after (mostly on GPUs); "
                        "scores only (no gate_/expert_ columns)")
    parser.add_argument("--compile-mode",
                        help="torch.compile mode, e.g. reduce-overhead (CUDA graphs); implies --compile")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse (report) images with more pixels than this (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--out", help="a file ending in .csv, .parquet or .jsonl (one table with rank/best columns), "
                        "or a folder (a name without a suffix, or ending in /: shards + manifest, for large runs); "
                        "other suffixes are refused; default: CSV on stdout")
    parser.add_argument("--format", default="parquet", choices=FORMATS, help="shard format of a folder --out")
    parser.add_argument("--block-size", type=int, default=1024,
                        help="inputs per block = per shard, the unit of resuming and of sharing work (default 1024)")
    parser.add_argument("--group-by", default="prompt", help="column whose groups rank/best (and --top-k) compare "
                        "images within (default: prompt)")
    parser.add_argument("--top-k", type=int, help="also write the K best images of every --group-by value, "
                        "computed from the shards (folder --out DIR: DIR.top<K>_by_<column>.<format> beside it)")
    parser.add_argument("--engine", default="local", choices=("local", "ray"),
                        help="local: this process (or each torchrun rank); ray: Ray Data model actors ([ray] extra)")
    parser.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, or a local instance)")
    parser.add_argument("--actors", type=int, default=1, help="Ray model actors (--engine ray)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per Ray actor (0: CPU actors)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0,
                        help="CPUs Ray reserves per actor (each decodes its own blocks; default 1)")
    parser.add_argument("--explain", metavar="DIR",
                        help="draw each scored image with its heat map (MANIQA's per-patch score x weight: where "
                        "the score comes from) as PNG files in DIR; column `heatmap` names each file (models with "
                        "MANIQA patches: maniqa, ma_agiqa; local engine)")
    parser.add_argument("--log-every", type=float, default=30.0,
                        help="seconds between progress lines when stderr is not a terminal")
    parser.set_defaults(func=_score)


def _score(args) -> int:
    import tempfile

    from agiqa.scoring.resolve import check_device, check_inputs, check_positive, resolve_model

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.out:
        raise AgiqaError("under torchrun every rank writes its own shards: pass --out with a folder (or a .csv/"
                         ".parquet/.jsonl file) that all ranks share")
    # Everything the user typed is checked before the model loads and before any output exists, so a mistake
    # leaves nothing behind that could refuse the corrected command.
    kind = output_kind(args.out)
    check_positive(batch_size=args.batch_size, block_size=args.block_size, top_k=args.top_k, actors=args.actors)
    if args.workers is not None and args.workers < 0:
        raise AgiqaError(f"--workers must be 0 (decode in the main process) or more, got {args.workers}")
    if args.explain and args.engine != "local":
        raise AgiqaError("--explain draws heat maps on the local engine (one process or torchrun), not with --engine "
                         "ray")
    check_device(args.device)
    source = resolve_model(args.model, check_names=False)  # names: checked by the Scorer, before any output exists
    if source.note and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: {source.note}", file=sys.stderr)
    args.model = source.model
    if args.weights and Path(args.model).is_dir():
        raise AgiqaError(f"--weights is for a registered model name; {args.model} is a model folder with its own "
                         "weights (model.safetensors)")
    check_inputs(args.paths)
    if kind == "table":
        return _run(args, ShardStore(f"{args.out}.parts", "parquet"), table=Path(args.out))
    if kind == "folder":
        return _run(args, ShardStore(args.out, args.format))
    with tempfile.TemporaryDirectory(prefix="agiqa-score-") as folder:
        return _run(args, ShardStore(Path(folder) / "parts", "parquet"), table=None)


def output_kind(out: str | None) -> str:
    """"stdout" (no --out), "table" (a .csv/.parquet/.jsonl file) or "folder" (shards); any other suffix is refused,
    since a file name like scores.txt that silently became a folder of Parquet shards is not what anyone meant."""
    if not out:
        return "stdout"
    path = Path(out)
    suffix = path.suffix.lower()
    if out.endswith(("/", os.sep)) or path.is_dir() or not suffix:
        return "folder"
    if suffix in TABLE_SUFFIXES:
        return "table"
    hint = " (.jsonl: one JSON object per line)" if suffix == ".json" else ""
    raise AgiqaError(f"--out {out}: unknown output type {suffix!r}; write a .csv, .parquet or .jsonl file{hint}, or "
                     "a folder of shards (a name without a suffix, or ending in /)")


def _run(args, store: ShardStore, table: Path | None | bool = False) -> int:
    """Score into `store`; then write `table` (a file, None = stdout) from it, or leave the shard folder.

    Order: list the inputs and check the output (nothing written), load the model, then start the output; a run that
    fails before its first shard removes the output it started (`ShardStore.discard_if_unscored`)."""
    from agiqa.scoring import distributed
    from agiqa.scoring.job import ScoreJob
    from agiqa.scoring.stream import default_workers, item_source

    prompts = _read_prompts(args.prompts) if args.prompts else None
    items = item_source(args.paths, prompts, args.prompt)
    job = ScoreJob(items, store, _setup(args), args.block_size, args.log_every)
    rank, world, device = distributed.init_from_env(args.device)
    created = False
    try:
        if rank == 0:
            job.plan_inputs()
            if not job.plan:
                raise AgiqaError("no images found in " + " ".join(args.paths) + " (folders are searched "
                                 f"recursively for {', '.join(sorted(IMAGE_SUFFIXES))})")
            store.check(job.setup)
        scorer = _scorer(args, device) if args.engine == "local" or table is not False or args.top_k else None
        if scorer is not None:
            _check_columns(args, scorer, table)
        if rank == 0:
            created = job.open_store()
            if job.done:
                finished = len(job.plan) - len(job.todo)
                print(f"resuming: {job.done:,} of {job.total:,} images already scored in {store.folder} ({finished} "
                      f"of {len(job.plan)} blocks already scored, {len(job.todo)} to go)", file=sys.stderr)
        distributed.barrier()
        if rank != 0:
            job.load_plan()
        if args.explain:
            os.makedirs(args.explain, exist_ok=True)
        if args.engine == "ray":
            from agiqa.scoring.ray_engine import run_on_ray

            run_on_ray(job, args.model, _scorer_kwargs(args), args.actors, args.gpus_per_actor, args.cpus_per_actor,
                       args.ray_address or os.environ.get("RAY_ADDRESS"))
        else:
            workers = args.workers if args.workers is not None else default_workers(scorer.device)
            job.run(scorer, workers, rank, world, heatmaps=args.explain)
        distributed.barrier()
        if rank != 0:
            return 0
        totals = job.finish()
        code = _report(args, job, totals, table, scorer)
        # torchrun reads a rank's non-zero exit as a crash (and may restart the job); failed inputs are rows.
        return 0 if world > 1 else code
    except BaseException:
        if created and world == 1:
            store.discard_if_unscored()
        raise
    finally:
        distributed.shutdown()


def _report(args, job, totals: dict, table: Path | None | bool, scorer) -> int:
    """Final table or top-k file, summary line and what the scores mean, failures on stderr; exit code 1 when any
    input failed."""
    store = job.store
    lower_better = scorer.lower_better if scorer is not None else False
    if table is False:  # a shard folder stays; best-of-N is computed from its shards
        if args.top_k:
            from agiqa.scoring.shards import top_k

            target = store.folder.with_name(f"{store.folder.name}.top{args.top_k}_by_{args.group_by}.{store.format}")
            write_table(top_k(store, args.group_by, args.top_k, lower_better), target)
        print(f"{store.folder}: {totals['images']} rows in {totals['blocks']} shard(s), {totals['scored']} scored, "
              f"{totals['failed']} failed")
        if scorer is not None:
            print(scorer.scale)
    else:
        frame = rank_within(store.read(), args.group_by, lower_better)
        best = frame[frame["rank"] <= args.top_k].sort_values([args.group_by, "rank"]) if args.top_k else None
        if table is None:
            print((frame if best is None else best).to_csv(index=False), end="")
        else:
            write_table(frame, table)
            if best is not None:
                write_table(best, table.with_name(f"{table.stem}.top{args.top_k}{table.suffix}"))
            shutil.rmtree(store.folder)
            print(f"wrote {len(frame)} rows to {table}: {totals['scored']} scored, {totals['failed']} failed")
        print(scorer.scale, file=sys.stderr if table is None else sys.stdout)
    if totals["failed"]:
        _list_failures(store if table is False else frame, totals)
        return 1
    return 0


def _list_failures(source, totals: dict, limit: int = 20) -> None:
    print(f"{totals['failed']} of {totals['images']} image(s) could not be scored:", file=sys.stderr)
    shown = 0
    frames = [source] if not isinstance(source, ShardStore) else (b.to_pandas() for b in source.batches(
        ["image", "error"]))
    for frame in frames:
        for image, error in frame.loc[frame["error"].notna(), ["image", "error"]].itertuples(index=False):
            if shown == limit:
                print(f"  ... and {totals['failed'] - limit} more (see the `error` column)", file=sys.stderr)
                return
            print(f"  {image}: {error}", file=sys.stderr)
            shown += 1


def _check_columns(args, scorer, table: Path | None | bool) -> None:
    """Before anything is scored: --explain needs per-patch scores; --group-by must name an output column."""
    if args.explain and not scorer.has_patch_map:
        raise AgiqaError(f"--explain: {args.model} has no per-patch scores to draw (heat maps come from MANIQA's "
                         "patches: maniqa, ma_agiqa); its gate weights and expert scores are columns already")
    columns = ["image", "prompt", *scorer.column_names, "error"] + (["heatmap"] if args.explain else [])
    if (table is not False or args.top_k) and args.group_by not in columns:
        raise AgiqaError(f"--group-by {args.group_by!r}: no such column (columns: {', '.join(columns)})")


def _scorer_kwargs(args) -> dict:
    return {"pretrained": args.weights or True, "precision": args.precision, "batch_size": args.batch_size,
            "encoder": args.encoder, "features": args.features, "trust_remote_code": args.trust_remote_code,
            "compile": args.compile or args.compile_mode is not None, "compile_mode": args.compile_mode,
            "max_pixels": args.max_pixels}


def _scorer(args, device: str):
    from agiqa.scoring.scorer import Scorer

    return Scorer(args.model, device=device, **_scorer_kwargs(args))


def _setup(args) -> dict:
    """What makes scores comparable across runs: an output of another setup is never mixed in."""
    return {"model": str(args.model), "weights": args.weights, "encoder": args.encoder, "features": args.features,
            "precision": args.precision,
            "max_pixels": args.max_pixels, "prompts": args.prompts, "prompt": args.prompt,
            "explain": os.path.abspath(args.explain) if args.explain else None,
            "inputs": [os.path.abspath(p) for p in args.paths]}


TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")


def write_table(frame, path: Path) -> None:
    """A pandas frame as .csv, .parquet or .jsonl, by the suffix of `path`."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(path, index=False)


def rank_within(table, column: str = "prompt", lower_better: bool = False):
    """Add `rank` (1 = best) and `best` among the images sharing `column`; failed images get no rank."""
    if column not in table.columns:
        raise AgiqaError(f"--group-by {column!r}: no such column (columns: {list(table.columns)})")
    ranks = table.groupby(column, dropna=False)["score"].rank(ascending=lower_better, method="first")
    table = table.assign(rank=ranks.astype("Int64"))
    return table.assign(best=table["rank"] == 1)


def _read_prompts(csv_path: str) -> dict[str, str]:
    """image (file name or path) -> prompt, from a CSV with columns image,prompt."""
    import pandas as pd

    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing_cols = {"image", "prompt"} - set(frame.columns)
    if missing_cols:
        raise AgiqaError(f"{csv_path}: missing column(s) {sorted(missing_cols)}; found {list(frame.columns)}")
    return dict(zip(frame["image"], frame["prompt"]))
