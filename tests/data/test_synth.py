import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from agiqa.data import load_dataset
from agiqa.data.synth import DEGRADATIONS, generate_synthetic, synthetic_alignment, synthetic_quality
from agiqa.metrics import compute_metrics

AGIQA3K_COLUMNS = ["name", "prompt", "adj1", "adj2", "style", "mos_quality", "std_quality", "mos_align", "std_align"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic(out, n=300, seed=0)
    return out


def _tree_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_deterministic_per_seed(tmp_path):
    generate_synthetic(tmp_path / "a", n=20, seed=5)
    generate_synthetic(tmp_path / "b", n=20, seed=5)
    generate_synthetic(tmp_path / "c", n=20, seed=6)
    a, b, c = (_tree_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a["data.csv"] != c["data.csv"] and a[sorted(a)[0]] != c[sorted(c)[0]]


def test_agiqa3k_layout(synth_dir):
    raw = synth_dir.joinpath("data.csv").read_bytes()
    assert raw.startswith(b"name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align\r\n")
    labels = pd.read_csv(synth_dir / "data.csv")
    assert list(labels.columns) == AGIQA3K_COLUMNS and len(labels) == 300
    assert labels["mos_quality"].between(0, 5).all() and labels["mos_align"].between(0, 5).all()
    frame = load_dataset("agiqa3k", synth_dir)
    assert len(frame) == 300 and frame["generator"].nunique() == 5
    assert frame["prompt"].str.fullmatch(r"(one|two|three|four) \w+ \w+, (flat|gradient|striped) style").all()
    with Image.open(frame["path"][0]) as img:
        assert img.size == (64, 64) and img.mode == "RGB"


def test_oracle_and_metrics_wiring(synth_dir):
    meta = pd.read_csv(synth_dir / "synth_meta.csv")
    labels = pd.read_csv(synth_dir / "data.csv")
    np.testing.assert_allclose(synthetic_quality(meta), meta["true_quality"], atol=1e-4)  # CSV keeps 6 decimals
    assert compute_metrics(meta["true_quality"], labels["mos_quality"])["srcc"] >= 0.9
    random_pred = np.random.default_rng(0).normal(size=len(labels))
    assert abs(compute_metrics(random_pred, labels["mos_quality"])["srcc"]) < 0.15


def test_quality_function_is_documented_formula():
    clean = dict.fromkeys(DEGRADATIONS, 0.0) | {"mismatched": 0}
    assert synthetic_quality(clean) == pytest.approx(4.8)
    assert synthetic_quality(clean | {"blur": 1.0}) == pytest.approx(0.3 + 4.5 * np.exp(-1.1))
    assert synthetic_quality(clean | {"mismatched": 1}) < synthetic_quality(clean)
    assert synthetic_alignment({"mismatch": "none", "blur": 0.0, "noise": 0.0}) == pytest.approx(4.5)
    assert synthetic_alignment({"mismatch": "shape", "blur": 0.0, "noise": 0.0}) == pytest.approx(1.2)


def test_mismatch_lowers_alignment(synth_dir):
    meta = pd.read_csv(synth_dir / "synth_meta.csv")
    labels = pd.read_csv(synth_dir / "data.csv")
    mismatched = meta["mismatched"] == 1
    assert 0.2 < mismatched.mean() < 0.4
    assert labels["mos_align"][mismatched].mean() < labels["mos_align"][~mismatched].mean() - 1.5
    drawn_differs = (
        (meta["count"] != meta["drawn_count"])
        | (meta["colour"] != meta["drawn_colour"])
        | (meta["shape"] != meta["drawn_shape"])
    )
    assert (drawn_differs == mismatched).all()


def _laplacian_energy(path) -> float:
    a = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    return np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).mean()


def test_degradations_visible_in_image_statistics(synth_dir):
    meta = pd.read_csv(synth_dir / "synth_meta.csv")
    energy = np.array([_laplacian_energy(synth_dir / name) for name in meta["name"]])
    assert stats.spearmanr(energy, meta["noise"])[0] > 0.5
    no_added_detail = (meta["noise"] == 0) & (meta["banding"] == 0) & (meta["jpeg"] == 0)
    assert no_added_detail.sum() > 50
    softening = meta["blur"] + meta["smooth"]
    assert stats.spearmanr(energy[no_added_detail], softening[no_added_detail])[0] < -0.5


def test_every_image_has_smooth_tones_for_banding_to_show(synth_dir):
    # The lighting ramp: even a flat background differs between opposite corners, so quantisation makes steps.
    meta = pd.read_csv(synth_dir / "synth_meta.csv")
    flat_clean = meta[(meta["style"] == "flat") & (meta[list(DEGRADATIONS)].sum(axis=1) == 0)]
    assert len(flat_clean) >= 5
    for name in flat_clean["name"]:
        a = np.asarray(Image.open(synth_dir / name).convert("L"), dtype=np.float64)
        corners = [a[:3, :3].mean(), a[:3, -3:].mean(), a[-3:, :3].mean(), a[-3:, -3:].mean()]
        assert max(corners) - min(corners) > 0.1 * max(corners), name


def test_generators_differ(synth_dir):
    meta = pd.read_csv(synth_dir / "synth_meta.csv")
    by_gen = meta.groupby("generator")[list(DEGRADATIONS)].mean()
    assert by_gen.loc["synthB", "blur"] > 2 * by_gen.loc["synthA", "blur"]
    assert by_gen.loc["synthC", "noise"] > 2 * by_gen.loc["synthA", "noise"]
    assert meta.groupby("generator")["true_quality"].mean().idxmax() == "synthA"


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="mismatch_rate"):
        generate_synthetic(tmp_path, n=5, mismatch_rate=2)
