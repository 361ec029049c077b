"""Scoring images the way a practitioner does: a saved model, a folder, prompts, a CSV; bad files reported."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from agiqa.cli import main
from agiqa.models import create_model
from agiqa.scoring.scorer import Scorer
from agiqa.scoring.sources import find_images


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "sub/c.png", "sub/d.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


@pytest.fixture()
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = create_model("test_ma_agiqa", semantic_experts=())
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_find_images_walks_folders_and_keeps_named_files(image_folder):
    found = find_images([image_folder])
    assert [p.name for p in found] == ["a.png", "b.jpg", "broken.png", "c.png", "d.png"]


def test_scorer_scores_and_reports_a_bad_image_without_losing_the_others(image_folder, model_dir):
    scorer = Scorer(model_dir, device="cpu", batch_size=2)
    files = [str(p) for p in find_images([image_folder])]
    result = scorer.score(files)
    assert [math.isnan(s) for s in result.scores] == [False, False, True, False, False]
    assert result.failures and result.failures[0][0].endswith("broken.png")
    # whatever the batch size, the same numbers as the model itself on the documented preprocessing (training's:
    # bicubic resize to the model's size, mean = std = 0.5), computed here without the Scorer
    from agiqa.data.transforms import normalize, resize_image

    model = create_model("test_ma_agiqa", semantic_experts=(), pretrained=str(model_dir)).eval()
    size = model.config.img_size
    good = [f for f in files if not f.endswith("broken.png")]
    with torch.no_grad():
        by_hand = model(normalize(torch.stack([resize_image(Image.open(f).convert("RGB"), size) for f in good])))
    for batch_size in (1, 2, 5):
        scores = Scorer(model_dir, device="cpu", batch_size=batch_size, precision="fp32").score(files).scores
        np.testing.assert_allclose([x for x in scores if not math.isnan(x)], by_hand.numpy(), atol=1e-5)


def test_semantic_model_without_encoder_is_refused(tmp_path):
    create_model("test_ma_agiqa").save_pretrained(tmp_path / "m")
    with pytest.raises(Exception, match="--encoder"):
        Scorer(tmp_path / "m", device="cpu")


def test_cli_score_writes_csv_with_best_of_n_and_exit_code_1_on_failures(image_folder, model_dir, tmp_path, capsys):
    prompts = pd.DataFrame({"image": ["a.png", "b.jpg", "broken.png", "c.png", "d.png"],
                            "prompt": ["cat", "cat", "cat", "dog", "dog"]})
    prompts.to_csv(tmp_path / "prompts.csv", index=False)
    code = main(["score", str(model_dir), str(image_folder), "--prompts", str(tmp_path / "prompts.csv"),
                 "--out", str(tmp_path / "scores.csv"), "--device", "cpu"])
    assert code == 1
    assert "broken.png" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "scores.csv")
    assert len(table) == 5
    for prompt, group in table.dropna(subset=["score"]).groupby("prompt"):
        best = group.loc[group["score"].idxmax()]
        assert bool(best["best"]) and group["best"].sum() == 1, prompt


def test_cli_score_all_good_exits_zero(image_folder, model_dir, capsys):
    assert main(["score", str(model_dir), str(image_folder / "a.png"), "--device", "cpu"]) == 0
    assert "a.png" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cli_score_compiled_gives_the_eager_scores(image_folder, model_dir, tmp_path, precision):
    """`--compile` really compiles (inductor on CPU, weights frozen) and changes no score."""
    args = ["score", str(model_dir), str(image_folder), "--device", "cpu", "--precision", precision]
    assert main(args + ["--out", str(tmp_path / "eager.csv")]) == 1  # broken.png
    torch._dynamo.reset()
    compiled_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert main(args + ["--compile", "--out", str(tmp_path / "compiled.csv")]) == 1
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > compiled_before
    eager, compiled = pd.read_csv(tmp_path / "eager.csv"), pd.read_csv(tmp_path / "compiled.csv")
    assert list(compiled["image"]) == list(eager["image"])
    # bf16: inductor fuses and orders the rounding differently; one bf16 step is 2**-8 ~ 4e-3 relative.
    np.testing.assert_allclose(compiled["score"], eager["score"], rtol=1e-4 if precision == "fp32" else 2e-2, atol=1e-6)


def test_cli_rejects_an_unknown_compile_mode(image_folder, model_dir, capsys):
    assert main(["score", str(model_dir), str(image_folder), "--compile-mode", "fastest"]) == 2
    assert "unknown torch.compile mode 'fastest'" in capsys.readouterr().err


def test_cli_compile_mode_implies_compile(monkeypatch, image_folder):
    seen = {}

    class Built(Exception):
        pass

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr("agiqa.scoring.scorer.Scorer", record)
    with pytest.raises(Built):
        main(["score", "model_dir", str(image_folder), "--compile-mode", "reduce-overhead"])
    assert seen["compile"] is True and seen["compile_mode"] == "reduce-overhead"
    seen.clear()
    with pytest.raises(Built):
        main(["score", "model_dir", str(image_folder)])
    assert seen["compile"] is False and seen["compile_mode"] is None
