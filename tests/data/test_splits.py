import random

import pandas as pd
import pytest
from _datahelp import make_root

from agiqa.data import load_dataset
from agiqa.data.splits import (
    Split,
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
