"""Small file utilities shared by weight loading, training checkpoints and the feature cache."""
from __future__ import annotations

import hashlib
import os
import pickle

from agiqa.errors import UntrustedFileError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (weights are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _numpy_scalar_globals() -> list:
    """What official training checkpoints pickle beside their tensors (``'loss': numpy.float64``): numpy scalars and
    dtypes, under numpy 2's and numpy 1's module names. Nothing that can run code."""
    import numpy as np

    scalar = np._core.multiarray.scalar
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *{type(np.dtype(c)) for c in "fdqlibe?"}]


def torch_load_weights_only(path: str | os.PathLike, mmap: bool = False):
    """``torch.load(weights_only=True)`` on the CPU, also accepting numpy scalars (official checkpoints store their
    loss so). Every PyTorch pickle the package reads goes through here: a file whose pickle would import or call
    anything else (code that could run) raises `UntrustedFileError` and nothing in it is executed. `mmap` maps the
    tensors' storage from the file instead of reading it (large sharded checkpoints)."""
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise untrusted_file_error(path, err) from err


def untrusted_file_error(path: str | os.PathLike, err: pickle.UnpicklingError) -> UntrustedFileError:
    """`UntrustedFileError` for a pickle that weights-only loading refused, naming what it tried to load."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
    return UntrustedFileError(path, reason or type(err).__name__)
