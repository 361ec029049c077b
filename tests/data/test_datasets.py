import os

import pandas as pd
import pytest
from _datahelp import make_root, png_bytes, write_images

from agiqa.data import COLUMNS, get_dataset_info, list_datasets, load_dataset
from agiqa.data.datasets import load_dataset_targets
from agiqa.errors import DatasetValidationError

REAL_ROWS = {"agiqa3k": 2982, "agiqa1k": 1080, "aigciqa2023": 2400, "aigiqa20k": 14000}


def test_registry_lists_benchmarks():
    assert set(list_datasets()) == {"agiqa1k", "agiqa3k", "aigciqa2023", "aigiqa20k", "koniq10k"}
    info = get_dataset_info("agiqa3k")
    assert info.label_file == "data.csv" and info.default_target == "quality"
    assert info.targets == {"quality": "mos_quality", "alignment": "mos_align"}
    assert info.rows == 2982 and info.score_range == (0.0, 5.0)


def test_unknown_dataset_suggests_names():
    with pytest.raises(DatasetValidationError, match="agiqa3k"):
        load_dataset("agiqa3", "/nowhere")


@pytest.mark.parametrize("dataset", ["agiqa3k", "agiqa1k", "aigciqa2023"])
def test_real_label_files_with_stand_in_images(shared_data, tmp_path, dataset):
    root = make_root(shared_data, dataset, tmp_path)
    image_dir = root / get_dataset_info(dataset).image_dir
    labels = load_dataset(dataset, root, check_files=False)
    write_images(image_dir, labels["name"])

    frame = load_dataset(dataset, root)
    assert len(frame) == REAL_ROWS[dataset]
    assert tuple(frame.columns) == COLUMNS + tuple(get_dataset_info(dataset).attributes)
    assert frame["mos"].dtype == float and frame["mos"].notna().all()
    assert frame.attrs == {"dataset": dataset, "target": "quality", "root": str(root.resolve())}
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in frame["path"])
    assert (frame["generator"] != "").all()


def test_agiqa3k_columns_and_targets(shared_data, tmp_path):
    root = make_root(shared_data, "agiqa3k", tmp_path)
    quality = load_dataset("agiqa3k", root, check_files=False)
    align = load_dataset("agiqa3k", root, target="alignment", check_files=False)
    styles = quality["style"][quality["style"] != ""]  # prompt attributes, for per-attribute reports
    assert len(styles) > 1000 and styles.nunique() > 3 and (quality["adj1"] != "").sum() > 500
    raw = pd.read_csv(root / "data.csv")
    assert quality["mos"].tolist() == raw["mos_quality"].tolist()
    assert align["mos"].tolist() == raw["mos_align"].tolist() and align.attrs["target"] == "alignment"
    assert quality["prompt"].nunique() == 300
    assert quality["generator"].value_counts().to_dict() == {
        "sd1.5": 1200, "midjourney": 592, "AttnGAN": 300, "glide": 300, "xl2.2": 300, "DALLE2": 290,
    }
    with pytest.raises(DatasetValidationError, match="alignment"):
        load_dataset("agiqa3k", root, target="authenticity", check_files=False)


def test_agiqa1k_prompts_from_xlsx_and_image_folder(shared_data, tmp_path):
    root = make_root(shared_data, "agiqa1k", tmp_path)
    frame = load_dataset("agiqa1k", root, check_files=False)
    assert frame["path"][0] == str(root.resolve() / "file" / frame["name"][0])
    first = frame.set_index("name").loc["deepai_0_0_0_0.jpg"]
    assert first["prompt"] == "bird, driving aircraft, city, anime style" and first["generator"] == "deepai"
    # Two names of AIGC_all.csv are absent from the xlsx (one is a typo there): they get no prompt.
    assert (frame["prompt"] == "").sum() == 2
    (root / "AIGC_MOS_Zscore.xlsx").unlink()
    assert (load_dataset("agiqa1k", root, check_files=False)["prompt"] == "").all()


def test_aigciqa2023_row_index_mapping(shared_data, tmp_path):
    root = make_root(shared_data, "aigciqa2023", tmp_path)
    frame = load_dataset("aigciqa2023", root, target="correspondence", check_files=False)
    assert frame["path"][7] == str(root.resolve() / "Image" / "allimg" / "7.png")
    assert frame["generator"].value_counts().to_dict() == dict.fromkeys(
        ["Controlnet", "DALLE", "Glide", "Lafite", "stable-diffusion", "Unidiffuser"], 400
    )
    assert frame["generator"][400] == "DALLE" and frame["prompt"][0] == "a corgi"
    assert 27 < frame["mos"].min() < frame["mos"].max() < 73


def test_aigiqa20k_rows_and_generators(shared_data, tmp_path):
    root = make_root(shared_data, "aigiqa20k", tmp_path)
    frame = load_dataset("aigiqa20k", root, check_files=False)
    assert len(frame) == 14000 and frame["generator"].nunique() == 15
    assert {"LCM_Pixart", "SDXL_Turbo", "SD1.5", "DALLE3"} <= set(frame["generator"])
    # File check on a subset: rewrite the label file with 50 rows and give them stand-in images.
    subset = tmp_path / "subset"
    subset.mkdir()
    pd.read_csv(root / "info_train.csv").head(50).to_csv(subset / "info_train.csv", index=False)
    write_images(subset, frame["name"][:50])
    assert len(load_dataset("aigiqa20k", subset)) == 50


def test_koniq_layout(tmp_path):
    pd.DataFrame(
        {"image_name": ["a.jpg", "b.jpg", "c.jpg"], "c1": [0, 1, 2], "MOS": [3.1, 2.5, 4.0], "SD": 0.5,
         "MOS_zscore": [55.0, 40.0, 70.0]}
    ).to_csv(tmp_path / "koniq10k_scores_and_distributions.csv", index=False)
    write_images(tmp_path / "1024x768", ["a.jpg", "b.jpg", "c.jpg"])
    frame = load_dataset("koniq10k", tmp_path, target="zscore")
    assert frame["mos"].tolist() == [55.0, 40.0, 70.0] and (frame["prompt"] == "").all()
    assert (frame["generator"] == "").all()


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_generic_csv(tmp_path):
    _write(tmp_path / "labels.csv", "file,score,text,model\nimgs/x.png,1.5,a cat,g1\nimgs/y.png,2,a dog,g2\n")
    write_images(tmp_path / "imgs", ["x.png", "y.png"])
    frame = load_dataset(
        "csv", None, csv=tmp_path / "labels.csv", image_col="file", score_col="score", prompt_col="text",
        generator_col="model",
    )
    assert frame["name"].tolist() == ["imgs/x.png", "imgs/y.png"]
    assert frame["mos"].tolist() == [1.5, 2.0] and frame["generator"].tolist() == ["g1", "g2"]
    assert frame.attrs == {"dataset": "csv", "target": "score", "root": str(tmp_path.resolve())}


def test_generic_csv_unknown_columns(tmp_path):
    _write(tmp_path / "labels.csv", "file,score\nx.png,1\n")
    with pytest.raises(DatasetValidationError) as err:
        load_dataset("csv", tmp_path, csv=tmp_path / "labels.csv", image_col="image", score_col="mos")
    message = str(err.value)
    assert "'image' (image_col / --image-col)" in message and "'mos' (score_col / --score-col)" in message
    assert "'file', 'score'" in message
    with pytest.raises(DatasetValidationError, match="unknown option"):
        load_dataset("csv", tmp_path, csv=tmp_path / "labels.csv", score_column="mos")


BAD_LABELS = (
    "name,prompt,mos_quality,mos_align\r\n"
    "a.png,p1,1.0,2\r\n"
    "b.png,p2,,2\r\n"          # row 2: empty MOS
    "c.png,p3,abc,2\r\n"       # row 3: non-numeric MOS
    "a.png,p4,2.0,2\r\n"       # row 4: duplicate of row 1
    ",p5,2.0,2\r\n"            # row 5: empty name
    "d.png,p6,nan,2\r\n"       # row 6: literal nan
)


def test_bad_labels_all_reported_at_once(tmp_path):
    _write(tmp_path / "data.csv", BAD_LABELS)
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    with pytest.raises(DatasetValidationError) as err:
        load_dataset("agiqa3k", tmp_path)
    message = str(err.value)
    assert "row 2 (line 3): 'mos_quality' is empty (NaN)" in message
    assert "row 3 (line 4): 'mos_quality' = 'abc' is not a finite number" in message
    assert "row 4 (line 5): duplicate 'name' 'a.png' (first at row 1 (line 2))" in message
    assert "row 5 (line 6): empty 'name'" in message
    assert "row 6 (line 7): 'mos_quality' = 'nan'" in message
    assert "1 of 6 image file(s) missing" in message and "'d.png' (row 6)" in message


def test_missing_column_names_columns_present(tmp_path):
    _write(tmp_path / "data.csv", "name,prompt,mos_align\nx.png,p,1\n")
    with pytest.raises(DatasetValidationError) as err:
        load_dataset("agiqa3k", tmp_path, check_files=False)
    assert "missing column 'mos_quality' (MOS of target 'quality')" in str(err.value)
    assert "; columns present: 'name', 'prompt', 'mos_align'" in str(err.value)


def test_missing_images_listed_and_counted(tmp_path):
    names = [f"img_{i:03d}.png" for i in range(30)]
    _write(tmp_path / "data.csv", "name,prompt,mos_quality,mos_align\n" + "".join(f"{n},p,1,1\n" for n in names))
    write_images(tmp_path, names[:5], png_bytes())
    with pytest.raises(DatasetValidationError) as err:
        load_dataset("agiqa3k", tmp_path)
    message = str(err.value)
    assert "25 of 30 image file(s) missing" in message and "'img_005.png' (row 6)" in message
    assert "'img_024.png'" in message and "'img_025.png'" not in message  # listing capped at 20
    assert len(load_dataset("agiqa3k", tmp_path, check_files=False)) == 30


def test_missing_label_file(tmp_path):
    with pytest.raises(DatasetValidationError, match=r"label file not found: .*data\.csv"):
        load_dataset("agiqa3k", tmp_path)


def test_missing_label_file_names_the_root_it_was_looked_for_in(tmp_path):
    with pytest.raises(DatasetValidationError, match=rf"is {tmp_path} the agiqa3k root\?"):
        load_dataset("agiqa3k", tmp_path)


def test_load_dataset_targets_gives_one_mos_column_per_target_of_the_real_agiqa3k_labels(shared_data, tmp_path):
    root = make_root(shared_data, "agiqa3k", tmp_path)
    write_images(root, load_dataset("agiqa3k", root, check_files=False)["name"])
    quality = load_dataset("agiqa3k", root, target="quality")
    alignment = load_dataset("agiqa3k", root, target="alignment")

    frame = load_dataset_targets("agiqa3k", root, ["alignment", "quality"])
    assert frame.attrs["targets"] == ["alignment", "quality"]
    assert frame["mos"].tolist() == alignment["mos"].tolist()  # `mos` is the first target's
    assert frame["mos_alignment"].tolist() == alignment["mos"].tolist()
    assert frame["mos_quality"].tolist() == quality["mos"].tolist()
    assert not frame["mos_alignment"].equals(frame["mos_quality"])
    single = load_dataset_targets("agiqa3k", root, ["alignment"])
    assert "targets" not in single.attrs and single["mos"].tolist() == alignment["mos"].tolist()
    assert load_dataset_targets("agiqa3k", root)["mos"].tolist() == quality["mos"].tolist()  # the default target


def test_load_dataset_targets_of_a_plain_csv_reads_each_target_from_its_score_column(tmp_path):
    write_images(tmp_path, ["a.png", "b.png", "c.png"])
    csv = tmp_path / "labels.csv"
    csv.write_text("image,looks,matches\na.png,1.5,4\nb.png,2.5,3\nc.png,3.5,2\n")

    frame = load_dataset_targets("csv", None, ["looks", "matches"], csv=str(csv))
    assert frame["mos_looks"].tolist() == [1.5, 2.5, 3.5] and frame["mos_matches"].tolist() == [4, 3, 2]
    with pytest.raises(DatasetValidationError, match="missing"):
        load_dataset_targets("csv", None, ["looks", "nope"], csv=str(csv))
