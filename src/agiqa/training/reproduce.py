"""Run one paper experiment over several seeds and put mean ± std beside the paper's numbers."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from agiqa.errors import AgiqaError
from agiqa.metrics import summarize_runs
from agiqa.training.config import TrainConfig

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
    from agiqa.training.run import train

    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise AgiqaError(f"unknown kind(s) of split {unknown or list(splits)} (--splits); choose from "
                         f"{', '.join(SPLITS)}")
    out = Path(out_dir)
    results = {}
    for kind in splits:
        runs, seen = [], []
        for seed in seed_list(seeds):
            config = seed_config(config_path, root, overrides, seed, kind)
            config.output_dir = str(out / kind / f"seed{seed}")
            runs.append(train(config, progress=progress)["overall"])
            seen.append(prompts_seen_in_training(config))
        results[kind] = {"runs": runs, "summary": summarize_runs(runs), "test_prompts_seen_in_training": seen}
    model, experiment = paper_model or config.model.name, Path(config_path).stem
    (out / "runs.json").write_text(json.dumps({"model": model, "experiment": experiment, "seeds": seed_list(seeds),
                                               "splits": results}, indent=2))
    table = results_table(model, experiment, results, seeds)
    (out / "results.md").write_text(table)
    return table


def seed_config(config_path: str | Path, root: str, overrides: list[str] | None, seed: int, kind: str) -> TrainConfig:
    """The experiment's config for one seed and kind of split (see `reproduce`)."""
    config = TrainConfig.from_yaml(config_path, [f"data.root={root}", *(overrides or [])])
    config.data.split_seed = seed
    config.trainer.seed = seed
    if kind == "prompt_disjoint":
        config.data.split_method = "prompt_disjoint"
    elif seed != OFFICIAL_SEED and config.data.split_method == "official":
        config.data.split_method = "random"
    return config


def prompts_seen_in_training(config: TrainConfig) -> list[int]:
    """[test prompts also in train or val, distinct test prompts] of the run `config` wrote (its split.json)."""
    from agiqa.data.splits import Split, seen_test_prompts
    from agiqa.training.datamodule import load_frame

    split = Split.from_json(Path(config.output_dir) / "split.json")
    return list(seen_test_prompts(load_frame(config.data), split))


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
    seen = [f"{SPLIT_TITLES[k]} {_mean_overlap(results[k])}" for k in kinds if results[k].get(
        "test_prompts_seen_in_training")]
    if seen:
        lines += ["", "Test prompts also seen in training (mean over seeds): " + "; ".join(seen) + "."]
    if paper.get("source"):
        lines += ["", f"Paper numbers: {paper['source']} of arXiv:2404.17762."]
    elif not paper:
        lines += ["", paper_note(model)]
    return "\n".join(lines) + "\n"


def _mean_overlap(result: dict) -> str:
    pairs = result["test_prompts_seen_in_training"]
    shared = sum(pair[0] for pair in pairs) / len(pairs)
    total = sum(pair[1] for pair in pairs) / len(pairs)
    return f"{shared:.0f} of {total:.0f}"
