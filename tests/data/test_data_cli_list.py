"""`agiqa datasets list` reads datasets.yaml itself so that it does not import pandas (issue #33): its table must be
what `agiqa.data.datasets` reads from the same file."""
from __future__ import annotations

from agiqa.cli import main
from agiqa.data.cli import _registry_entries
from agiqa.data.datasets import get_dataset_info, list_datasets


def test_list_table_is_the_registry():
    entries = _registry_entries()
    assert sorted(entries) == list_datasets()
    for name in list_datasets():
        info, entry = get_dataset_info(name), entries[name]
        assert entry["default_target"] == info.default_target
        assert list(entry["targets"]) == list(info.targets)
        assert (entry["rows"], entry["label_file"], entry.get("image_dir") or "") == (
            info.rows, info.label_file, info.image_dir or "")


def test_list_rows_name_each_dataset_as_the_registry_does(capsys):
    assert main(["datasets", "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[0] for row in rows] == [*list_datasets(), "csv"]
    for row in rows[:-1]:
        info = get_dataset_info(row[0])
        assert row[1].rstrip(",") == info.default_target
        assert str(info.rows) in row and info.label_file in row
