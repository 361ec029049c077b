"""Runtime helpers: device / precision choice and the CPU allocator setting."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from agiqa.runtime import resolve_device, resolve_precision

# Allocates and frees 3 x 20 MB activations per "forward" (like a model's intermediate tensors) and prints the
# minor page faults of 10 later iterations.
_FAULT_PROBE = """
import resource, sys, torch
if sys.argv[1] == "1":
    from agiqa.runtime import keep_freed_memory
    assert keep_freed_memory()
def forward():
    tensors = [torch.ones(5 * 2**20) for _ in range(3)]
    return sum(float(t[0]) for t in tensors)
for _ in range(6):  # the heap grows to its working size first
    forward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    forward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: bool) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULT_PROBE, "1" if keep else "0"], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_removes_page_faults_of_reused_activations():
    # Fresh pages for 10 forwards would be 10 x 60 MB / 4 KiB = 153,600 faults. Without the setting glibc often
    # (depending on the heap layout) trims and re-faults them: ~10k faults per forward. With it: (almost) none.
    kept = _faults(True)
    assert kept < 1_500
    assert kept <= _faults(False)


def test_prepare_model_applies_it_on_cpu():
    from agiqa.runtime import keep_freed_memory
    from agiqa.scoring.inference import prepare_model

    keep_freed_memory.cache_clear()
    prepare_model(torch.nn.Linear(2, 2), device="cpu")
    assert keep_freed_memory.cache_info().currsize == 1


def test_precision_choice():
    cpu = resolve_device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", cpu)


# Flags as Linux lists them on the CPU kinds docs name (trimmed to what matters here).
CPU_KINDS = {
    "AMD EPYC Zen 3 (AVX2, no bf16)": ("fpu sse4_2 avx avx2 fma", "fp32"),
    "AMD EPYC Zen 4 (AVX512-BF16)": ("fpu avx2 avx512f avx512_bf16", "bf16"),
    "Intel Xeon Sapphire Rapids (AMX)": ("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "bf16"),
}


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_auto_precision_on_each_cpu_kind_is_what_docs_say(kind, monkeypatch, tmp_path):
    from agiqa import runtime
    from agiqa.scoring import inference
    from agiqa.semantic.mplug_owl2 import default_precision

    flags, expected = CPU_KINDS[kind]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {i}\nmodel name\t: {kind}\nflags\t\t: {flags}\n\n" for i in range(2)))
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    runtime.cpu_flags.cache_clear()
    try:
        assert runtime.cpu_flags() == frozenset(flags.split())
        assert resolve_precision("auto", torch.device("cpu")) == expected
        assert default_precision(torch.device("cpu")) == expected  # the mPLUG-Owl2 encoder's own default
        assert runtime.cpu_has_amx() == ("amx_bf16" in flags)
        # bf16 linears through oneDNN on AMX CPUs only (docs/maniqa.md), where this PyTorch's oneDNN runs bf16
        assert inference.prefers_onednn_bf16_linear() == ("amx_bf16" in flags and inference.onednn_has_bf16_linear())
        assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    finally:
        runtime.cpu_flags.cache_clear()
