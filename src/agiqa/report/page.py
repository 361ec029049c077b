"""One self-contained HTML page for one or more runs (figures embedded as data URLs and also saved as PNGs in
`figures/`), section by section: what each kind of run can show, and a note where a section has nothing to show."""
from __future__ import annotations

import base64
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from agiqa.metrics import compute_metrics
from agiqa import figures
from agiqa.report import gallery, tables
from agiqa.report.runs import Run

MAX_ROWS = 50  # rows of a best-of-N table shown in the page (the CSV beside it has them all)
KINDS = {"evaluation": "evaluation against MOS", "reproduce": "reproduction over seeds", "score": "scores"}


@dataclass
class Section:
    """One part of the page under the heading of its run (`group`); `key` is its anchor, and its name without the
    run prefix is its `data-section` (stable, for tests and links)."""

    group: str
    key: str
    title: str
    parts: list[str] = field(default_factory=list)


class Report:
    """Collects sections and figures for the runs, then writes report.html (+ figures/*.png, tables/*.csv)."""

    def __init__(self, out: str | Path, worst: int = 12):
        self.out, self.worst = Path(out), worst
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        (self.out / "tables").mkdir(parents=True, exist_ok=True)
        self.sections: list[Section] = []
        self.group = "All runs"

    def write(self, runs: list[Run], title: str = "agiqa report") -> Path:
        evaluations = [run for run in runs if run.kind == "evaluation"]
        if len(evaluations) > 1:
            self._comparison(evaluations)
        for index, run in enumerate(runs):
            prefix = f"run{index + 1}"
            self.group = f"{prefix}: {run.name} ({KINDS[run.kind]})"
            {"evaluation": self._evaluation, "reproduce": self._reproduce, "score": self._scores}[run.kind](
                run, prefix)
        path = self.out / "report.html"
        path.write_text(_page(title, runs, self.sections), encoding="utf-8")
        return path

    # ----------------------------------------------------------------------------------------------------------
    def _figure(self, draw, name: str, *args) -> str:
        path = draw(*args, self.out / "figures" / f"{name}.png")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}" '
                f'data-file="figures/{path.name}"><figcaption>figures/{path.name}</figcaption></figure>')

    def _table(self, frame: pd.DataFrame, name: str, index: bool = True) -> str:
        if "n" in frame:
            frame = frame.astype({"n": int})
        frame.to_csv(self.out / "tables" / f"{name}.csv", index=index)
        return frame.to_html(float_format=lambda v: f"{v:.4f}", na_rep="nan", index=index, classes="table",
                             border=0) + f'<p class="file">tables/{name}.csv</p>'

    def _add(self, prefix: str, key: str, title: str, *parts: str) -> None:
        self.sections.append(Section(self.group, f"{prefix}-{key}", title, list(parts)))

    # ----------------------------------------------------------------------------------------------------------
    def _comparison(self, runs: list[Run]) -> None:
        names = distinct_names(runs)
        overall = pd.DataFrame.from_dict({name: {"target": run.target or "—", **overall_metrics(run.table)}
                                          for name, run in zip(names, runs)}, orient="index")
        histograms = [(name, *tables.error_histogram(run.table["prediction"], run.table["mos"]))
                      for name, run in zip(names, runs)]
        self._add("all", "comparison", "All runs side by side", self._table(overall, "all-overall"),
                  "<p>Error density of every run on one axis: more mass in the first bins = fewer large errors "
                  "(how the MA-AGIQA paper shows where its semantic experts help over MANIQA alone).</p>",
                  self._figure(figures.error_density, "all-error-density", histograms))

    def _evaluation(self, run: Run, prefix: str) -> None:
        table = run.table
        metrics = overall_metrics(table)
        target = f" Target: <code>{html.escape(run.target)}</code>." if run.target else ""
        self._add(prefix, "summary", "Test results",
                  f"<p>{len(table)} images from <code>{html.escape(str(run.path))}</code>.{target} PLCC and RMSE "
                  "after the official 4-parameter logistic fit; SRCC and KRCC on raw scores.</p>",
                  self._table(pd.DataFrame({"overall": metrics}).T, f"{prefix}-overall"))
        self._add(prefix, "scatter", "Predicted vs MOS",
                  self._figure(figures.scatter_with_fit, f"{prefix}-scatter", table, metrics, run.name))
        edges, counts = tables.error_histogram(table["prediction"], table["mos"])
        self._add(prefix, "error-density", "Error density (MA-AGIQA Fig. 6)",
                  f"<p>|prediction − MOS| in bins of 0.1: {counts.sum()} images in {len(counts)} bins.</p>",
                  self._figure(figures.error_density, f"{prefix}-error-density", [(run.name, edges, counts)]))
        self._groups(run, prefix, "generator", "per-generator", "Per generator")
        for column in tables.attribute_columns(table):
            self._groups(run, prefix, column, f"per-{column}", f"Per prompt attribute: {column}")
        self._gates(run, prefix, by="generator")
        tiles = gallery.worst_predictions(run, self.worst)
        self._add(prefix, "worst", f"The {len(tiles)} worst predictions",
                  "<p>Largest |prediction − MOS| first. Heat map: MANIQA's per-patch score × weight over the image "
                  "(bright = adds most to the score).</p>", _tiles(tiles))

    def _groups(self, run: Run, prefix: str, column: str, key: str, title: str) -> None:
        if column not in run.table:
            return self._add(prefix, key, title, f"<p>No <code>{column}</code> column in these predictions.</p>")
        frame = tables.group_metrics(run.table, column)
        if len(frame) < 2:
            return self._add(prefix, key, title, f"<p>Fewer than two <code>{column}</code> groups of 5 or more "
                             "images: nothing to compare.</p>")
        self._add(prefix, key, title, self._table(frame, f"{prefix}-{key}"),
                  self._figure(figures.group_bars, f"{prefix}-{key}", frame, f"{title} (groups of ≥ 5 images)"))

    def _gates(self, run: Run, prefix: str, by: str) -> None:
        gates = run.gate_columns
        if not gates:
            return self._add(prefix, "gates", "Gate weights", "<p>This model has no gated experts to show.</p>")
        parts = [self._figure(figures.gate_distribution, f"{prefix}-gates", run.table, gates)]
        if by in run.table and run.table[by].nunique() > 1:
            parts.append(self._figure(figures.gate_by_group, f"{prefix}-gates-by-{by}", run.table, gates, by))
        if "mos" in run.table:
            parts += ["<p>Does the gate lean on an expert where the model errs? Spearman correlation of each gate "
                      "with |prediction − MOS|:</p>",
                      self._table(tables.gate_error_correlation(run.table, gates), f"{prefix}-gate-error")]
        self._add(prefix, "gates", "Gate weights", *parts)

    def _reproduce(self, run: Run, prefix: str) -> None:
        from agiqa.training.reproduce import SPLIT_TITLES, paper_note, paper_result, per_target_rows

        summary = run.summary
        model, experiment, seeds = summary.get("model", "?"), summary.get("experiment", "?"), summary["seeds"]
        paper = paper_result(model, experiment) or {}
        rows = {}
        for key in tables.METRICS:
            row = {f"{SPLIT_TITLES[kind]} (mean ± std)": f"{result['summary'][key]['mean']:.4f} ± "
                   f"{result['summary'][key]['std']:.4f}" for kind, result in summary["splits"].items()}
            rows[key.upper()] = {**row, "paper (official split)": f"{paper[key]:.4f}" if key in paper else "—"}
        if paper.get("source"):
            note = f"Paper numbers: {paper['source']}."
        else:
            note = "" if paper else paper_note(model)
        parts = [self._table(pd.DataFrame(rows).T, f"{prefix}-vs-paper"), f"<p>{html.escape(note)}</p>"]
        per_target = per_target_rows(summary["splits"])
        if per_target:
            parts += [f"<h4>Every target (mean ± std over seeds; the rows above are <code>"
                      f"{html.escape(next(iter(per_target)))}</code>)</h4>",
                      self._table(pd.DataFrame(per_target).T, f"{prefix}-per-target")]
        for kind, result in summary["splits"].items():
            per_seed = pd.DataFrame(result["runs"], index=[f"seed {s}" for s in seeds])
            per_seed = per_seed[[k for k in ("n", *tables.METRICS) if k in per_seed]]
            seen = result.get("test_prompts_seen_in_training")
            if seen:
                per_seed["test prompts seen in training"] = [f"{shared} of {total}" for shared, total in seen]
            parts += [f"<h4>{html.escape(SPLIT_TITLES[kind])}, per seed</h4>",
                      self._table(per_seed, f"{prefix}-{kind}-per-seed")]
        self._add(prefix, "seeds", f"{model} on {experiment}, {len(seeds)} seeds, beside the paper", *parts)

    def _scores(self, run: Run, prefix: str) -> None:
        table = run.table
        failed = int(table["score"].isna().sum())
        self._add(prefix, "summary", "Scores",
                  f"<p>{len(table)} images from <code>{html.escape(str(run.path))}</code>: {len(table) - failed} "
                  f"scored, {failed} failed. No MOS: scores only.</p>")
        self._add(prefix, "score-histogram", "Score distribution",
                  self._figure(figures.score_histogram, f"{prefix}-score-histogram", table["score"]))
        if "prompt" in table and table["prompt"].notna().any():
            best = tables.best_of_n(table)
            shown = f" (first {MAX_ROWS} of {len(best)} prompts; all in the CSV)" if len(best) > MAX_ROWS else ""
            self._add(prefix, "best-of-n", f"Best of N per prompt{shown}",
                      self._table(best.head(MAX_ROWS), f"{prefix}-best-of-n", index=False))
        else:
            self._add(prefix, "best-of-n", "Best of N per prompt", "<p>No prompts in this output.</p>")
        tiles = gallery.lowest_scores(run, self.worst)
        self._add(prefix, "lowest", f"The {len(tiles)} lowest-scored images", _tiles(tiles))
        self._gates(run, prefix, by="prompt")


def distinct_names(runs: list[Run]) -> list[str]:
    """Each run's name, widened by its parent folder where runs share a name (official/seed20 and
    prompt_disjoint/seed20), then by the whole parent path where that is not enough."""
    names = [run.name for run in runs]
    for widen in (lambda run: f"{run.path.parent.name}/", lambda run: f"{run.path.parent}/"):
        counts = Counter(names)
        names = [widen(run) + run.name if counts[name] > 1 else name for run, name in zip(runs, names)]
    return names


def overall_metrics(table: pd.DataFrame) -> dict:
    metrics = compute_metrics(table["prediction"], table["mos"])
    return {"n": metrics["n"], **{key: metrics[key] for key in tables.METRICS}}


def _tiles(tiles: list[dict]) -> str:
    cells = []
    for tile in tiles:
        facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(_fact(v))}</dd>" for k, v in tile["facts"].items())
        images = "".join(f'<figure><img class="{kind}" src="{tile[kind]}" alt="{kind}"><figcaption>{label}'
                         "</figcaption></figure>" for kind, label in (("image", "image"), ("heatmap", "heat map"))
                         if tile[kind])
        note = f'<p class="note">{html.escape(tile["note"])}</p>' if tile["note"] else ""
        cells.append(f'<div class="tile"><div class="pair">{images}</div><p class="name">'
                     f'{html.escape(str(tile["title"]))}</p><dl>{facts}</dl>{note}</div>')
    return f'<div class="tiles">{"".join(cells)}</div>'


def _fact(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _page(title: str, runs: list[Run], sections: list[Section]) -> str:
    groups: dict[str, list[Section]] = {}
    for section in sections:
        groups.setdefault(section.group, []).append(section)
    toc = "".join(f"<li>{html.escape(group)}<ol>" + "".join(
        f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in members) + "</ol></li>"
        for group, members in groups.items())
    body = "".join(f'<h2 class="run">{html.escape(group)}</h2>' + "".join(
        f'<section id="{s.key}" data-section="{re.sub(r"^(run[0-9]+|all)-", "", s.key)}"><h3>'
        f'{html.escape(s.title)}</h3>{"".join(s.parts)}</section>' for s in members)
        for group, members in groups.items())
    listed = ", ".join(f"<code>{html.escape(str(run.path))}</code> ({run.kind})" for run in runs)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; color: #1d2330; max-width: 1100px; margin: 0 auto; padding: 24px; }}
h1 {{ font-size: 24px; }} h2.run {{ font-size: 21px; margin-top: 36px; background: #f2f4f7; padding: 6px 10px; }}
h3 {{ font-size: 17px; border-bottom: 1px solid #d0d5dd; padding-bottom: 4px; }}
section {{ margin-bottom: 28px; }} figure {{ margin: 8px 0; }} figure img {{ max-width: 100%; }}
figcaption, .file {{ color: #667085; font-size: 12px; margin: 2px 0; }}
table.table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0; }}
table.table th, table.table td {{ border-bottom: 1px solid #e4e7ec; padding: 3px 10px; text-align: right; }}
.tiles {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 14px; }}
.tile {{ border: 1px solid #d0d5dd; border-radius: 8px; padding: 8px; }}
.pair {{ display: flex; gap: 6px; }} .pair figure {{ width: 49%; margin: 0; }}
.pair img {{ width: 100%; image-rendering: pixelated; border-radius: 4px; }}
.name {{ font-size: 12px; color: #667085; word-break: break-all; }}
dl {{ display: grid; grid-template-columns: auto 1fr; gap: 0 8px; font-size: 13px; margin: 4px 0; }}
dt {{ color: #667085; }} dd {{ margin: 0; }} .note {{ color: #b54708; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1><p>Runs: {listed}</p>
<nav><ol>{toc}</ol></nav>
{body}
</body></html>
"""
