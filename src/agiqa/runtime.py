"""Device and precision choice shared by scoring, feature extraction and training."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_logger = logging.getLogger(__name__)

# glibc mallopt() parameters; 32 MiB is the largest mmap threshold glibc accepts on 64-bit systems.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_THRESHOLD_MAX = 32 * 2**20
_TRIM_THRESHOLD = 2**30


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``avx2``, ``avx512_bf16``, ``amx_bf16`` ...); empty elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    return frozenset(word for line in lines if line.startswith("flags") for word in line.split(":", 1)[1].split())


def cpu_has_fast_bf16() -> bool:
    """True when the CPU runs bf16 matmuls natively (AMX or AVX512-BF16); emulated bf16 is slower than fp32."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


@torch.compiler.assume_constant_result  # torch.compile bakes the answer in instead of tracing the file read
def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (Intel Sapphire Rapids and later): PyTorch's fused CPU attention then
    runs its GEMMs on them too (see agiqa.models.maniqa.prefers_matmul_attention)."""
    return "amx_bf16" in cpu_flags()


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Let glibc keep freed activation buffers for reuse instead of returning them to the OS (process-wide).

    A CPU forward pass frees and re-allocates the same multi-MB activations every call. By default glibc serves
    them from fresh ``mmap`` pages or trims them off the heap, so every call pays page faults to zero the memory
    again (~15k faults, 2-3 % of a full MANIQA forward on one core). Raising the mmap and trim thresholds keeps
    those pages mapped. Returns False (and changes nothing) where the C library is not glibc.
    """
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    applied = (bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
               and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    _logger.debug("glibc mallopt thresholds %s", "raised" if applied else "unchanged")
    return applied


def bound_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (what MALLOC_ARENA_MAX does) unless the environment sets them (process-wide).

    Each decoding thread otherwise gets an arena of its own (up to 8 per core) and every arena keeps the memory of
    the largest images it decoded: the service soak of docs/scoring.md ("Memory over a long run") grew
    739 -> 1690 MB with the default arenas, 739 -> 1088 MB and flat with 2, at the same speed. False where it does
    not apply (not glibc, or MALLOC_ARENA_MAX is set)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _glibc_mallopt()
    return mallopt is not None and mallopt(_M_ARENA_MAX, arenas) == 1


def _glibc_mallopt():
    """glibc's `mallopt`, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None`/"auto" -> CUDA if available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Pick the compute precision: bf16 on CUDA with bf16 support and on CPUs with AMX/avx512_bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """Autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def torch_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
