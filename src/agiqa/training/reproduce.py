"""Run one paper experiment over several seeds and put mean ± std beside the paper's numbers."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from agiqa.errors import AgiqaError
from agiqa.metrics import summarize_runs
from agiqa.training.config import DataSection, TrainConfig

if TYPE_CHECKING:  # the resolved data each run hands back; importing it loads torch, which `agiqa report` does not need
    from agiqa.training.resolve import ResolvedData

PAPER_RESULTS_FILE = Path(__file__).with_name("paper_results.yaml")
OFFICIAL_SEED = 20


def paper_result(model: str, experiment: str) -> dict | None:
    """The paper's reported metrics for a config (`ma_agiqa`, `agiqa3k`), if it reports them."""
    table = yaml.safe_load(PAPER_RESULTS_FILE.read_text())
    return table.get(model, {}).get(experiment)


def paper_note(model: str) -> str:
    """Why a model has no paper numbers beside ours (its `note` entry), or a plain statement that none are known."""
    table = yaml.safe_load(PAPER_RESULTS_FILE.read_text())
    return table.get(model, {}).get("note") or f"No published {model} numbers are known for this experiment."


def seed_list(count: int) -> list[int]:
    """The official seed 20 first, then 21, 22, ..."""
    return [OFFICIAL_SEED + offset for offset in range(count)]


SPLITS = ("official", "prompt_disjoint")
SPLIT_TITLES = {"official": "official split", "prompt_disjoint": "prompt-disjoint"}


def reproduce(config_path: str | Path, root: str, seeds: int, out_dir: str | Path, overrides: list[str] | None = None,
              progress: bool = True, paper_model: str | None = None, splits: tuple[str, ...] = SPLITS) -> str:
    """Train+test `config_path` once per seed (split seed = training seed) and per kind of split; write runs.json
    and results.md (one table: a column per kind of split, the paper beside them).

    Kinds: "official", the config's own split (with the official method: seed 20's official split, random 70/10/20
    splits for the other seeds), and "prompt_disjoint" (no prompt in two parts; on AGIQA-3K the official split
    tests 293 of its 300 prompts on images of prompts seen in training). Runs go to `out_dir/<kind>/seed<N>/`.
    `paper_model` names the paper's model whose numbers go beside ours (default: the config's model name).
    """
    from agiqa.training.resolve import resolve_experiment
    from agiqa.training.run import train_experiment

    out = Path(out_dir)

    def run(kind: str, seed: int) -> tuple[dict, ResolvedData]:
        config = TrainConfig.from_yaml(config_path, [f"data.root={root}", *(overrides or [])])
        config.data = seed_split(config.data, seed, kind)
        config.trainer.seed = seed
        config.output_dir = str(out / kind / f"seed{seed}")
        experiment = resolve_experiment(config)
        return train_experiment(experiment, progress=progress), experiment.data

    model = paper_model or TrainConfig.from_yaml(config_path, [f"data.root={root}", *(overrides or [])]).model.name
    return run_seeds(run, model, Path(config_path).stem, seeds, out, splits)


def reproduce_zero_shot(spec: str, data: DataSection, seeds: int, out_dir: str | Path,
                        splits: tuple[str, ...] = SPLITS, device: str | None = None, precision: str = "auto") -> str:
    """The zero-shot baseline of a VLM (`vlm:<id>`, see `agiqa.models.vlm_levels`) on the seeds and kinds of split
    `reproduce` trains on: no training, each seed's test part scored and measured the same way. The VLM's answers
    are extracted once into `data.features.cache` (default OUT/features) and read by every seed."""
    from agiqa.training.resolve import resolve_evaluation
    from agiqa.training.run import evaluate_experiment, evaluated_model

    out = Path(out_dir)
    data = dataclasses.replace(data, features=dataclasses.replace(
        data.features, cache=data.features.cache or str(out / "features")))

    def run(kind: str, seed: int) -> tuple[dict, ResolvedData]:
        seed_data, folder = seed_split(data, seed, kind), out / kind / f"seed{seed}"
        model = evaluated_model(spec, seed_data)
        experiment = resolve_evaluation(spec, model, seed_data, folder, precision, device)
        return evaluate_experiment(spec, model, experiment, folder), experiment.data

    return run_seeds(run, spec, data.dataset, seeds, out, splits)


def run_seeds(run, model: str, experiment: str, seeds: int, out: Path, splits: tuple[str, ...]) -> str:
    """`run(kind, seed) -> (metrics.json dict, the run's resolved data)` for every kind of split and seed; writes
    runs.json and results.md and returns the table. A multi-target run's `runs`/`summary` are its first target's
    (as its `overall`), and `per_target` holds every target's runs and summary."""
    from agiqa.data.splits import seen_test_prompts

    if seeds < 1:
        raise AgiqaError(f"--seeds must be at least 1 (runs per kind of split), got {seeds}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise AgiqaError(f"unknown kind(s) of split {unknown or list(splits)} (--splits); choose from "
                         f"{', '.join(SPLITS)}")
    results = {}
    for kind in splits:
        runs, per_target, seen = [], {}, []
        for seed in seed_list(seeds):
            metrics, data = run(kind, seed)
            runs.append(metrics["overall"])
            for target, values in metrics.get("per_target", {}).items():
                per_target.setdefault(target, []).append(values)
            seen.append(list(seen_test_prompts(data.frame, data.split)))
        results[kind] = {"runs": runs, "summary": summarize_runs(runs), "test_prompts_seen_in_training": seen}
        if per_target:
            results[kind]["per_target"] = {target: {"runs": values, "summary": summarize_runs(values)}
                                           for target, values in per_target.items()}
    (out / "runs.json").write_text(json.dumps({"model": model, "experiment": experiment, "seeds": seed_list(seeds),
                                               "splits": results}, indent=2))
    table = results_table(model, experiment, results, seeds)
    (out / "results.md").write_text(table)
    return table


def seed_split(data: DataSection, seed: int, kind: str) -> DataSection:
    """`data` with one seed's split of one kind (see `reproduce`)."""
    if kind == "prompt_disjoint":
        method = "prompt_disjoint"
    elif seed != OFFICIAL_SEED and data.split_method == "official":
        method = "random"
    else:
        method = data.split_method
    return dataclasses.replace(data, split_seed=seed, split_method=method)


def results_table(model: str, experiment: str, results: dict, n_seeds: int) -> str:
    """Markdown: our mean ± std over seeds for each kind of split, next to the paper's number for each metric."""
    paper = paper_result(model, experiment) or {}
    kinds = list(results)
    columns = [f"{SPLIT_TITLES[k]} (mean ± std)" for k in kinds] + ["paper (official split)"]
    lines = [f"## {model} on {experiment} ({n_seeds} seeds)", "", "| metric | " + " | ".join(columns) + " |",
             "|---" * (len(kinds) + 2) + "|"]
    for key in ("srcc", "plcc", "krcc", "rmse"):
        cells = []
        for kind in kinds:
            stats = results[kind]["summary"].get(key, {})
            cells.append(f"{stats.get('mean', float('nan')):.4f} ± {stats.get('std', float('nan')):.4f}")
        theirs = f"{paper[key]:.4f}" if key in paper else "—"
        lines.append(f"| {key.upper()} | " + " | ".join(cells) + f" | {theirs} |")
    per_target = per_target_rows(results)
    if per_target:
        first = next(iter(per_target))
        header = list(next(iter(per_target.values())))
        lines[2:2] = [f"Target `{first}` (the model's first); every target's SRCC and PLCC follow the table.", ""]
        lines += ["", "| target | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        lines += [f"| {target} | " + " | ".join(row.values()) + " |" for target, row in per_target.items()]
    seen = [f"{SPLIT_TITLES[k]} {_mean_overlap(results[k])}" for k in kinds if results[k].get(
        "test_prompts_seen_in_training")]
    if seen:
        lines += ["", "Test prompts also seen in training (mean over seeds): " + "; ".join(seen) + "."]
    if paper.get("source"):
        lines += ["", f"Paper numbers: {paper['source']} of arXiv:2404.17762."]
    elif not paper:
        lines += ["", paper_note(model)]
    return "\n".join(lines) + "\n"


def per_target_rows(results: dict) -> dict[str, dict[str, str]]:
    """{target: {"<split> SRCC": "mean ± std", "<split> PLCC": ...}} of a multi-target reproduction; {} for one
    target."""
    rows: dict[str, dict[str, str]] = {}
    for kind, result in results.items():
        for target, values in result.get("per_target", {}).items():
            for key in ("srcc", "plcc"):
                stats = values["summary"].get(key, {})
                rows.setdefault(target, {})[f"{SPLIT_TITLES[kind]} {key.upper()}"] = (
                    f"{stats.get('mean', float('nan')):.4f} ± {stats.get('std', float('nan')):.4f}")
    return rows


def _mean_overlap(result: dict) -> str:
    pairs = result["test_prompts_seen_in_training"]
    shared = sum(pair[0] for pair in pairs) / len(pairs)
    total = sum(pair[1] for pair in pairs) / len(pairs)
    return f"{shared:.0f} of {total:.0f}"
