"""`agiqa.scoring.inference`: the torch.compile options each device gets."""
from __future__ import annotations

import pytest
import torch

from agiqa.errors import AgiqaError
from agiqa.scoring.inference import compile_options, prepare_model


def test_cpu_compiles_with_frozen_weights_gpu_does_not():
    assert compile_options(None, torch.device("cpu")) == {"freezing": True}
    assert compile_options(None, torch.device("cuda")) == {}


def test_compile_mode_options_are_kept():
    from torch._inductor import list_mode_options

    for mode in ("reduce-overhead", "max-autotune"):
        expected = list_mode_options(mode, dynamic=False)
        assert expected  # these modes do set something
        assert compile_options(mode, torch.device("cuda")) == expected
        assert compile_options(mode, torch.device("cpu")) == {**expected, "freezing": True}


def test_unknown_compile_mode_is_an_error_naming_the_known_ones():
    with pytest.raises(AgiqaError, match=r"unknown torch.compile mode 'fastest'.*reduce-overhead"):
        prepare_model(torch.nn.Linear(2, 2), device="cpu", compile=True, compile_mode="fastest")
