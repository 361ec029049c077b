import random

import pandas as pd
import pytest
from _datahelp import make_root

from agiqa.data import load_dataset
from agiqa.data.splits import (
    Split,
    dataset_split,
    kfold_split,
    make_split,
    official_split,
    prompt_disjoint_split,
    prompt_leakage,
    random_split,
    seen_test_prompts,
)
from agiqa.errors import DatasetValidationError


def global_random_split(n: int, seed: int = 20):
    """MA-AGIQA's code, verbatim in behaviour: global random state."""
    random.seed(seed)
    idx = list(range(n))
    random.shuffle(idx)
    return idx[: int(0.7 * n)], idx[int(0.7 * n) : int(0.8 * n)], idx[int(0.8 * n) :]


@pytest.mark.parametrize("n, sizes", [(2982, (2087, 298, 597)), (14000, (9800, 1400, 2800))])
def test_official_split_sizes_and_global_random_equality(n, sizes):
    state = random.getstate()
    try:
        expected = global_random_split(n)
    finally:
        random.setstate(state)
    split = official_split(n)
    assert split.sizes() == sizes
    assert (split.train, split.val, split.test) == expected
    split.validate(n)


@pytest.mark.parametrize("n", [10, 20, 100, 101, 997])
def test_cut_points_match_official_for_round_numbers(n):
    split = random_split(n, seed=3)
    train, val, test = global_random_split(n, seed=3)
    assert split.sizes() == (len(train), len(val), len(test))


def test_random_split_seeds_differ():
    assert official_split(500).train == random_split(500, seed=20).train
    assert random_split(500, seed=1).train != random_split(500, seed=2).train
    with pytest.raises(ValueError, match="ratios"):
        random_split(10, seed=0, ratios=(0.5, 0.5, 0.5))


def test_kfold_covers_every_row_once_as_test():
    n, k = 103, 5
    splits = [kfold_split(n, k, fold, seed=0) for fold in range(k)]
    tests = [i for s in splits for i in s.test]
    assert sorted(tests) == list(range(n))
    for s in splits:
        s.validate(n)
        assert len(s.val) == int(0.1 * n)
    with pytest.raises(ValueError, match="fold"):
        kfold_split(n, k, fold=5)


def test_prompt_disjoint_on_agiqa3k(shared_data, tmp_path):
    frame = load_dataset("agiqa3k", make_root(shared_data, "agiqa3k", tmp_path), check_files=False)
    official = make_split(frame, "official")
    assert official.dataset == "agiqa3k"
    assert prompt_leakage(frame, official) > 0  # the official split shares prompts between parts
    disjoint = make_split(frame, "prompt_disjoint", seed=0)
    disjoint.validate(len(frame))
    assert prompt_leakage(frame, disjoint) == 0
    train, val, test = disjoint.sizes()
    assert abs(train / len(frame) - 0.7) < 0.02 and abs(test / len(frame) - 0.2) < 0.02


def test_prompt_disjoint_keeps_empty_prompts_apart():
    frame = pd.DataFrame({"prompt": ["a", "a", "", "", "b", "b", "", "c", "c", "c"]})
    split = prompt_disjoint_split(frame, seed=1, ratios=(0.5, 0.2, 0.3))
    split.validate(10)
    assert prompt_leakage(frame, split) == 0


def test_leakage_counts_distinct_shared_prompts():
    frame = pd.DataFrame({"prompt": ["a", "a", "b", "b", "c", ""]})
    split = Split(train=[0, 2, 5], val=[1], test=[3, 4], method="manual", seed=0, n=6)
    assert prompt_leakage(frame, split) == 2


def test_json_round_trip_and_validation(tmp_path):
    split = kfold_split(50, 5, 1, seed=7)
    split.dataset = "agiqa3k"
    split.to_json(tmp_path / "split.json")
    assert Split.from_json(tmp_path / "split.json") == split
    with pytest.raises(DatasetValidationError, match="made for 50 rows"):
        split.validate(51)
    broken = Split(train=[0, 1], val=[1], test=[5], method="manual", seed=0, n=3)
    with pytest.raises(DatasetValidationError) as err:
        broken.validate()
    assert "more than once" in str(err.value) and "outside" in str(err.value) and "in no part" in str(err.value)


def test_make_split_unknown_method():
    with pytest.raises(ValueError, match="prompt_disjoint"):
        make_split(pd.DataFrame({"prompt": ["a"] * 5}), "stratified")


def test_official_agiqa3k_split_tests_prompts_seen_in_training_and_prompt_disjoint_none(shared_data, tmp_path):
    root = make_root(shared_data, "agiqa3k", tmp_path)
    frame = load_dataset("agiqa3k", root, check_files=False)
    official = make_split(frame, "official", seed=20)
    shared, total = seen_test_prompts(frame, official)
    assert total > 250 and shared == total  # every test prompt of the official split also has training images
    assert prompt_leakage(frame, official) == 293  # of the 300 prompts (the number docs/ma_agiqa.md gives)
    disjoint = make_split(frame, "prompt_disjoint", seed=20)
    assert seen_test_prompts(frame, disjoint)[0] == 0 and seen_test_prompts(frame, disjoint)[1] > 40


# --- Mutation-testing additions (docs/mutation.md): expected values come from the official procedure written out
# with Python's global random state (as MA-AGIQA's code does), or are written by hand.


def official_order(n: int, seed: int) -> list[int]:
    """`random.seed(seed); idx = list(range(n)); random.shuffle(idx)`, leaving the global state as it was."""
    state = random.getstate()
    try:
        random.seed(seed)
        idx = list(range(n))
        random.shuffle(idx)
    finally:
        random.setstate(state)
    return idx


def hand_prompt_disjoint(prompts: list[str], seed: int, ratios=(0.7, 0.1, 0.2)):
    """Groups of rows by prompt in first-appearance order (each empty prompt alone), shuffled with the global random
    state, each group into the first part whose row budget is not yet reached."""
    groups: list[list[int]] = []
    for i, prompt in enumerate(prompts):
        same = [g for g in groups if prompt and prompts[g[0]] == prompt]
        if same:
            same[0].append(i)
        else:
            groups.append([i])
    state = random.getstate()
    try:
        random.seed(seed)
        random.shuffle(groups)
    finally:
        random.setstate(state)
    n, parts, taken = len(prompts), ([], [], []), 0
    for group in groups:
        part = 0 if taken < ratios[0] * n - 1e-9 else 1 if taken < (ratios[0] + ratios[1]) * n - 1e-9 else 2
        parts[part].extend(group)
        taken += len(group)
    return tuple(sorted(p) for p in parts)


PROMPTS = ["a", "a", "b", "", "c", "c", "c", "", "d", "e", "e", "", "f", "g", "g", "h", "", "i", "j", "j"]


def test_make_split_defaults_and_every_method_against_the_written_out_procedure():
    frame = pd.DataFrame({"prompt": PROMPTS})
    frame.attrs["dataset"] = "toy"
    n = len(frame)
    order = official_order(n, 20)
    default = make_split(frame)
    assert (default.train, default.val, default.test) == (order[:14], order[14:16], order[16:])
    assert (default.method, default.seed, default.n, default.fold, default.dataset) == ("official", 20, n, None, "toy")
    order = official_order(n, 7)
    split = make_split(frame, "official", seed=7)
    assert (split.train, split.val, split.test, split.seed) == (order[:14], order[14:16], order[16:], 7)

    order = official_order(n, 3)
    split = make_split(frame, "random", seed=3)
    assert (split.train, split.val, split.test) == (order[:14], order[14:16], order[16:])
    assert (split.method, split.seed, split.n, split.fold) == ("random", 3, n, None)

    order = official_order(n, 4)
    split = make_split(frame, "kfold", seed=4)  # k = 5, fold 0: test = first 4 shuffled rows, val = next int(0.1 n)
    assert (split.test, split.val, split.train) == (order[:4], order[4:6], order[6:])
    assert (split.method, split.seed, split.n, split.fold) == ("kfold", 4, n, 0)
    split = make_split(frame, "kfold", seed=4, k=4, fold=3)
    assert (split.test, split.val, split.train) == (order[15:], order[:2], order[2:15])
    assert split.fold == 3

    for seed in (9, 20):
        split = make_split(frame, "prompt_disjoint", seed=seed)
        assert (split.train, split.val, split.test) == hand_prompt_disjoint(PROMPTS, seed)
        assert (split.method, split.seed, split.n, split.fold) == ("prompt_disjoint", seed, n, None)
    with pytest.raises(ValueError, match=r"^unknown split method 'x'; choose one of official, random, kfold, "
                                         r"prompt_disjoint$"):
        make_split(frame, "x")


def test_official_and_random_split_record_how_they_were_made():
    split = official_split(10)
    assert (split.method, split.seed, split.n, split.fold, split.dataset) == ("official", 20, 10, None, None)
    assert official_split(10, seed=5).seed == 5
    split = random_split(10, seed=6)
    assert (split.method, split.seed, split.n, split.fold) == ("random", 6, 10, None)


def test_empty_prompts_stand_alone_and_group_boundaries_follow_the_ratios():
    frame = pd.DataFrame({"prompt": [""] * 10})  # ten groups of one row: the budgets 7 / 8 rows cut exactly
    split = prompt_disjoint_split(frame, seed=0)
    assert split.sizes() == (7, 1, 2)
    assert (split.train, split.val, split.test) == hand_prompt_disjoint([""] * 10, 0)
    split = prompt_disjoint_split(frame, seed=0, ratios=(0.5, 0.0, 0.5))
    assert split.sizes() == (5, 0, 5)


@pytest.mark.parametrize("k, fold", [(2, 1), (5, 4)])
def test_kfold_accepts_k_from_2_to_n(k, fold):
    split = kfold_split(5, k, fold, seed=1)
    order = official_order(5, 1)
    bounds = {2: [0, 2, 5], 5: [0, 1, 2, 3, 4, 5]}[k]
    assert split.test == order[bounds[fold]:bounds[fold + 1]]


@pytest.mark.parametrize("k, fold", [(1, 0), (6, 0), (5, 5), (5, -1)])
def test_kfold_refuses_k_outside_2_to_n_and_folds_outside_0_to_k(k, fold):
    with pytest.raises(ValueError, match=rf"^need 2 <= k <= n and 0 <= fold < k, got k={k}, fold={fold}, n=5$"):
        kfold_split(5, k, fold)


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (1.2, -0.2, 0.0), (0.7, 0.1, 0.1), (0.25, 0.25, 0.25, 0.25)])
def test_ratios_must_be_three_non_negative_fractions_summing_to_one(ratios):
    with pytest.raises(ValueError, match="three non-negative fractions summing to 1"):
        random_split(10, seed=0, ratios=ratios)
    with pytest.raises(ValueError, match="three non-negative fractions summing to 1"):
        prompt_disjoint_split(pd.DataFrame({"prompt": list("abcdefghij")}), ratios=ratios)


def test_a_zero_ratio_gives_an_empty_part():
    order = official_order(10, 2)
    split = random_split(10, seed=2, ratios=(0.8, 0.0, 0.2))
    assert (split.train, split.val, split.test) == (order[:8], [], order[8:])


def test_seen_test_prompts_ignores_empty_prompts():
    frame = pd.DataFrame({"prompt": ["a", "", "b", "", "a", "c"]})
    split = Split(train=[0], val=[2], test=[1, 3, 4, 5], method="manual", seed=0, n=6)
    assert seen_test_prompts(frame, split) == (1, 2)  # test prompts {a, c}; a also in train


def test_validate_message_counts_duplicates_and_lists_at_most_ten_outside_rows():
    split = Split(train=[0, 0, 1], val=[3], test=[2, 2], method="manual", seed=0, n=3)
    with pytest.raises(DatasetValidationError) as err:
        split.validate()
    assert str(err.value) == ("invalid manual split: 2 row index(es) appear more than once; "
                              "row indices outside 0..2: [3]")
    split = Split(train=list(range(3, 15)), val=[], test=[], method="manual", seed=0, n=3)
    with pytest.raises(DatasetValidationError) as err:
        split.validate()
    assert str(err.value) == ("invalid manual split: row indices outside 0..2: [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]; "
                              "3 row(s) are in no part")


def test_split_file_format_is_fixed(tmp_path):
    Split(train=[1], val=[], test=[0], method="manual", seed=0, n=2).to_json(tmp_path / "s.json")
    assert (tmp_path / "s.json").read_text(encoding="utf-8") == (
        '{\n "train": [\n  1\n ],\n "val": [],\n "test": [\n  0\n ],\n "method": "manual",\n "seed": 0,\n'
        ' "n": 2,\n "fold": null,\n "dataset": null\n}')


def test_from_json_reads_minimal_files_and_names_every_problem(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"train": [1], "val": [], "test": [0], "method": "manual", "seed": null, "n": 2}')
    assert Split.from_json(path) == Split(train=[1], val=[], test=[0], method="manual", seed=None, n=2)

    path.write_text("[1, 2]")
    with pytest.raises(DatasetValidationError) as err:
        Split.from_json(path)
    assert str(err.value) == f"{path}: not a split file: expected a JSON object, got list"

    path.write_text('{"train": [true], "val": [], "test": [0], "method": "manual", "n": 2, "extra": 1}')
    with pytest.raises(DatasetValidationError) as err:
        Split.from_json(path)
    assert str(err.value) == (f"{path}: not a split file: missing 'seed'; unknown key 'extra'; "
                              "'train' must be a list of row indices")

    path.write_text('{"train": [0, 1, 1], "val": [], "test": [], "method": "official", "seed": 20, "n": 2}')
    with pytest.raises(DatasetValidationError) as err:
        Split.from_json(path)
    assert str(err.value) == f"{path}: invalid official split: 1 row index(es) appear more than once"

    path.write_text('{"train": [0,')
    with pytest.raises(DatasetValidationError) as err:
        Split.from_json(path)
    assert str(err.value).startswith(f"{path}: not a split file (invalid JSON: Expecting value")


def test_dataset_split_is_the_method_split_the_split_file_or_every_row_in_test(tmp_path):
    frame = pd.DataFrame({"prompt": [f"p{i}" for i in range(50)]})
    frame.attrs["dataset"] = "agiqa3k"
    made = dataset_split(frame, method="random", seed=4)
    assert made.sizes() == random_split(50, 4).sizes() and made.test == random_split(50, 4).test
    made.to_json(tmp_path / "split.json")
    assert dataset_split(frame, split_file=tmp_path / "split.json").test == made.test
    with pytest.raises(DatasetValidationError, match="made for 50 rows, the dataset has 49"):
        dataset_split(frame.iloc[:49], split_file=tmp_path / "split.json")
    everything = dataset_split(frame, every_row_in_test=True)
    assert everything.test == list(range(50)) and not everything.train and everything.dataset == "agiqa3k"


def test_check_disjoint_names_a_row_in_two_parts():
    Split(train=[0, 1], val=[2], test=[3], method="random", seed=0, n=4).check_disjoint()
    with pytest.raises(DatasetValidationError, match="row 2 is in both the val and test parts"):
        Split(train=[0, 1], val=[2], test=[2, 3], method="random", seed=0, n=4).check_disjoint()
