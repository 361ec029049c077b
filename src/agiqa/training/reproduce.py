"""Run one paper experiment over several seeds and put mean ± std beside the paper's numbers."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

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


def reproduce(config_path: str | Path, root: str, seeds: int, out_dir: str | Path, overrides: list[str] | None = None,
              progress: bool = True, paper_model: str | None = None) -> str:
    """Train+test `config_path` once per seed (split seed = training seed); write runs.json and results.md.

    `paper_model` names the paper's model whose numbers go beside ours (default: the config's model name).
    """
    from agiqa.training.run import train

    out = Path(out_dir)
    runs = []
    for seed in seed_list(seeds):
        config = TrainConfig.from_yaml(config_path, [f"data.root={root}", *(overrides or [])])
        config.data.split_seed = seed
        config.trainer.seed = seed
        if seed != OFFICIAL_SEED and config.data.split_method == "official":
            config.data.split_method = "random"
        config.output_dir = str(out / f"seed{seed}")
        runs.append(train(config, progress=progress)["overall"])
    summary = summarize_runs(runs)
    model, experiment = paper_model or config.model.name, Path(config_path).stem
    (out / "runs.json").write_text(json.dumps({"model": model, "experiment": experiment, "seeds": seed_list(seeds),
                                               "runs": runs, "summary": summary}, indent=2))
    table = results_table(model, experiment, summary, len(runs))
    (out / "results.md").write_text(table)
    return table


def results_table(model: str, experiment: str, summary: dict, n_runs: int) -> str:
    """Markdown: our mean ± std over seeds next to the paper's number for each metric."""
    paper = paper_result(model, experiment) or {}
    lines = [f"## {model} on {experiment} ({n_runs} seeds)", "", "| metric | ours (mean ± std) | paper |",
             "|---|---|---|"]
    for key in ("srcc", "plcc", "krcc", "rmse"):
        stats = summary.get(key, {})
        ours = f"{stats.get('mean', float('nan')):.4f} ± {stats.get('std', float('nan')):.4f}"
        theirs = f"{paper[key]:.4f}" if key in paper else "—"
        lines.append(f"| {key.upper()} | {ours} | {theirs} |")
    if paper.get("source"):
        lines += ["", f"Paper numbers: {paper['source']} of arXiv:2404.17762."]
    elif not paper:
        lines += ["", paper_note(model)]
    return "\n".join(lines) + "\n"
