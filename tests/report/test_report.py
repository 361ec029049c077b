"""`agiqa report` on real runs: a 2-seed reproduction of a tiny MA-AGIQA on synthetic data (two evaluation runs
with saved models, and the reproduction itself) plus `agiqa score --explain` output of one of its models."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agiqa.cli import main
from agiqa.metrics import compute_metrics
from agiqa.figures import SIZE
from agiqa.report.runs import load_runs
from agiqa.report.tables import error_histogram, group_metrics

EVALUATION_SECTIONS = ["summary", "scatter", "error-density", "per-generator", "per-style", "per-adj1", "per-adj2",
                       "gates", "worst"]
SCORE_SECTIONS = ["summary", "score-histogram", "best-of-n", "lowest", "gates"]


@pytest.fixture(scope="module")
def report(reproduced, tmp_path_factory):
    """The report of seed 20 on the official and on the prompt-disjoint split, the reproduction, scores of the first
    one's model over the synthetic images (with heat maps) and `agiqa evaluate` of that model on its test split."""
    root, repro, _ = reproduced
    work = tmp_path_factory.mktemp("report")
    seed20 = repro / "official" / "seed20"
    labels = pd.read_csv(root / "data.csv")
    labels[["name", "prompt"]].rename(columns={"name": "image"}).to_csv(work / "prompts.csv", index=False)
    assert main(["score", str(seed20 / "model"), str(root), "--prompts", str(work / "prompts.csv"), "--out",
                 str(work / "scores"), "--explain", str(work / "maps"), "--device", "cpu", "--workers", "0"]) == 0
    assert main(["evaluate", str(seed20 / "model"), "--dataset", "agiqa3k", "--root", str(root), "--split-file",
                 str(seed20 / "split.json"), "--out", str(work / "eval"), "--device", "cpu"]) == 0
    runs = [seed20, repro / "prompt_disjoint" / "seed20", repro, work / "scores", work / "eval"]
    assert main(["report", *map(str, runs), "--out", str(work / "out"), "--worst", "4"]) == 0
    return work / "out", repro, work


def test_the_page_has_every_section_and_every_figure_is_a_png_of_the_promised_size(report):
    out, _, _ = report
    page = (out / "report.html").read_text()
    sections = re.findall(r'<section id="([^"]+)" data-section="([^"]+)"', page)
    by_run = {}
    for key, name in sections:
        by_run.setdefault(key.split("-", 1)[0], []).append(name)
    assert by_run == {"all": ["comparison"], "run1": EVALUATION_SECTIONS, "run2": EVALUATION_SECTIONS,
                      "run3": ["seeds"], "run4": SCORE_SECTIONS, "run5": EVALUATION_SECTIONS}
    referenced = re.findall(r'data-file="figures/([^"]+)"', page)
    on_disk = sorted(path.name for path in (out / "figures").iterdir())
    assert sorted(referenced) == on_disk and len(on_disk) >= 20
    for name in on_disk:
        with Image.open(out / "figures" / name) as image:
            assert image.format == "PNG" and image.size == SIZE, name
            assert np.asarray(image.convert("L")).std() > 5, name  # something is drawn
    assert not re.search(r'src="https?:', page)  # self-contained: opens offline
    trained, scores = page[:page.index('id="run3-')], page[page.index('id="run4-lowest"'):page.index('id="run5-')]
    evaluated = page[page.index('id="run5-'):]
    assert trained.count('class="heatmap"') == 8  # worst 4 of each training run, with MANIQA heat maps
    assert scores.count('class="heatmap"') == 4  # from `score --explain`'s heatmap column
    assert evaluated.count('class="heatmap"') == 4  # `agiqa evaluate` output: its metrics.json names the model
    assert "0.8939" in page  # the paper's AGIQA-3K SRCC beside our mean ± std


def test_fig6_bins_hold_every_image_once(report):
    out, repro, _ = report
    predictions = pd.read_csv(repro / "official" / "seed20" / "predictions.csv")
    edges, counts = error_histogram(predictions["prediction"], predictions["mos"])
    assert counts.sum() == len(predictions) and np.allclose(np.diff(edges[:-1]), 0.1)
    assert f"{len(predictions)} images in {len(counts)} bins" in (out / "report.html").read_text()
    rng = np.random.default_rng(0)
    mos = rng.uniform(0, 5, 500)
    edge_cases = np.concatenate([mos[:100], mos[100:200] + 0.3, mos[200:] + rng.uniform(-2, 2, 300)])  # exact 0.3s
    for prediction in (mos, edge_cases):
        assert error_histogram(prediction, mos)[1].sum() == 500


def test_per_generator_table_is_compute_metrics_on_each_group(report):
    out, repro, _ = report
    (run,) = load_runs(repro / "official" / "seed20")
    assert run.target == "quality"  # the dataset's default target, as the run's metrics.json records it
    predictions = run.table
    written = pd.read_csv(out / "tables" / "run1-per-generator.csv", index_col=0)
    assert list(written.index) == sorted(g for g, group in predictions.groupby("generator") if len(group) >= 5)
    for generator, row in written.iterrows():
        group = predictions[predictions["generator"] == generator]
        expected = compute_metrics(group["prediction"], group["mos"])
        assert row["n"] == len(group)
        for key in ("srcc", "plcc", "krcc", "rmse"):
            assert row[key] == pytest.approx(expected[key], abs=1e-9, nan_ok=True), (generator, key)
    assert group_metrics(predictions, "generator").index.tolist() == written.index.tolist()


def test_a_trained_model_directory_has_a_model_card_that_says_how_it_was_made(reproduced):
    _, repro, _ = reproduced
    card = (repro / "official" / "seed20" / "model" / "README.md").read_text()
    metrics = json.loads((repro / "official" / "seed20" / "metrics.json").read_text())
    for part in ("# ma_agiqa", "## Architecture", "## Configuration", "## Training data and split",
                 "official, seed 20", "## Metrics", f"{metrics['overall']['srcc']:.4f}", "## How to load",
                 "library_name: agiqa"):
        assert part in card, part
    loading = re.search(r"model = (create_model\(.*\))", card).group(1)
    from agiqa.models import create_model, saved_architecture  # noqa: F401 - the card's own snippet runs

    loaded = json.loads(json.dumps(eval(loading).config.to_dict()))
    assert loaded == json.loads((repro / "official" / "seed20" / "model" / "config.json").read_text())


def test_a_model_saved_by_hand_says_no_training_is_recorded(tmp_path):
    from agiqa.models import create_model

    create_model("test_moe_agiqa").save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "Not recorded" in card and "No evaluation recorded" in card and "prompts=" in card
    assert "expert0, expert1, expert2, expert3" in card and "crops" in card


def test_what_is_not_a_run_is_named(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing: no such run" in err and "empty: not a run agiqa can report on" in err


def test_the_side_by_side_table_names_each_run_s_target(report):
    out, _, _ = report
    table = pd.read_csv(out / "tables" / "all-overall.csv", index_col=0)
    # two training runs and the `agiqa evaluate` output: each metrics.json records the target its MOS measure
    assert list(table["target"]) == ["quality"] * 3
    # runs of the same folder name are told apart by their parent folder instead of one replacing the other
    assert list(table.index) == ["official/seed20 · quality", "prompt_disjoint/seed20 · quality", "eval · quality"]
