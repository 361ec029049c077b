"""Fast, gradient-free model execution: device placement, precision, batching, optional `torch.compile`.

These are plain functions so that the user-facing Scorer, the CLI and the benchmarks share one code path::

    model = prepare_model(create_model("maniqa", pretrained=...), device="auto", compile=False)
    scores = batched_forward(model, x, batch_size=32, precision="auto")   # x normalised, (B, 3, S, S)
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import torch
from torch import nn

from agiqa.errors import InvalidOptionError
from agiqa.runtime import (autocast, cpu_has_amx, keep_freed_memory, resolve_device, resolve_precision,
                           torch_dtype)

_logger = logging.getLogger(__name__)

__all__ = ["inference_context", "prepare_model", "keep_low_precision_weights", "compile_options", "batched_forward",
           "model_device", "OneDNNLinear", "onednn_has_bf16_linear", "prefers_onednn_bf16_linear"]

# Layers whose weights autocast casts to bf16/fp16 on every call.
_AUTOCAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for parameter-less modules)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@contextlib.contextmanager
def inference_context(precision: str = "auto", device: str | torch.device | None = None) -> Iterator[str]:
    """``torch.inference_mode()`` + autocast for the resolved precision; yields the precision actually used.

    ``precision``: "auto" (bf16 on CUDA and on CPUs with AMX/AVX512-BF16, else fp32), "fp32", "bf16" or "fp16".
    """
    device = resolve_device(device)
    resolved = resolve_precision(precision, device)
    with torch.inference_mode(), autocast(resolved, device):
        yield resolved


def prepare_model(
    model: nn.Module,
    device: str | torch.device | None = None,
    compile: bool = False,
    channels_last: bool = False,
    compile_mode: str | None = None,
    precision: str | None = None,
) -> nn.Module:
    """Move to ``device`` ("auto" = CUDA if present), set ``eval()``, optionally channels-last and ``torch.compile``.

    With ``precision`` ("auto", "bf16", "fp16"; None or "fp32" change nothing) the weights that autocast would cast
    on every call are cast once (:func:`keep_low_precision_weights`): run the model under that precision only.

    MANIQA already keeps its 3x3 convolutions in channels-last layout internally, so ``channels_last`` only changes
    the parameter layout (useful for CNN backbones). ``compile_mode`` is a ``torch.compile`` mode; the inductor options
    each device gets are :func:`compile_options`. Compilation falls back to eager with a warning if it fails.
    On CPU it also calls :func:`agiqa.runtime.keep_freed_memory` (no page faults on re-used activation memory).
    """
    device = resolve_device(device)
    precision = None if precision is None else resolve_precision(precision, device)
    if device.type == "cpu":
        keep_freed_memory()
    model = model.to(device).eval()
    if precision is not None:
        keep_low_precision_weights(model, precision)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        options = compile_options(compile_mode, device)
        try:
            model = torch.compile(model, dynamic=False, options=options)
        except Exception as err:  # no compiler toolchain: keep eager
            _logger.warning("torch.compile failed (%s: %s); running eagerly", type(err).__name__, err)
    return model


def keep_low_precision_weights(model: nn.Module, precision: str) -> int:
    """Store the weights and biases of the linear and convolution layers inside ``model.low_precision_modules`` in
    ``precision`` (bf16 / fp16; fp32 or a model without that attribute: nothing). Returns how many were cast.

    Autocast casts exactly these to the same dtype on every call (MANIQA bf16: ~17 % of a CPU forward), so the outputs
    under that precision are bit for bit the same; the fp32 parts (score heads, MoE-AGIQA's regressor) are not
    listed there and stay fp32. The fp32 weights are gone: run the model under ``precision`` only. In bf16 on an AMX
    CPU (:func:`prefers_onednn_bf16_linear`), those ``nn.Linear`` layers become :class:`OneDNNLinear` (the bias fused
    into the GEMM; same scores).
    """
    if precision == "fp32":
        return 0
    dtype = torch_dtype(precision)
    onednn = dtype == torch.bfloat16 and model_device(model).type == "cpu" and prefers_onednn_bf16_linear()
    cast = 0
    for name in getattr(model, "low_precision_modules", ()):
        for layer in model.get_submodule(name).modules():
            if isinstance(layer, _AUTOCAST_LAYERS) and layer.weight.dtype == torch.float32:
                layer.to(dtype)
                cast += 1
                if onednn and type(layer) is nn.Linear:
                    layer.__class__ = OneDNNLinear  # same object and parameters: only its forward changes
    return cast


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose gradient-free CPU forward with bf16 weights calls oneDNN's linear with the bias fused
    (``torch.ops.mkldnn._linear_pointwise``, the op inductor uses) instead of ``addmm``, which first copies the bias
    into the output and then accumulates onto it. Same kernels, same scores bit for bit
    (``tests/scoring/test_inference.py``), one pass over the output less: bf16 MANIQA and MoE-AGIQA 1.03-1.09x on
    2 AMX cores (``benchmarks/bench_linears.py``). The input is cast to the weight's dtype, as autocast casts it.
    With gradients, on other devices or dtypes, and under ``torch.compile`` (whose CPU freezing makes its own oneDNN
    linears) it is a plain ``nn.Linear``. Parameters and state-dict names are ``nn.Linear``'s.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() or torch.compiler.is_compiling() or x.device.type != "cpu"
                or self.weight.dtype != torch.bfloat16):
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.weight, self.bias, "none", [], "")


def onednn_has_bf16_linear() -> bool:
    """True when this PyTorch build has oneDNN's fused linear and this CPU runs its bf16 kernels."""
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")
            and bool(mkldnn._is_mkldnn_bf16_supported()))


def prefers_onednn_bf16_linear() -> bool:
    """True where :class:`OneDNNLinear` is used for bf16: CPUs with AMX tiles (where it was measured: faster, the
    same scores) whose oneDNN has the bf16 linear. Elsewhere (AVX512-BF16 without AMX: not measured) ``addmm`` stays;
    ``benchmarks/bench_linears.py`` compares the two on any CPU whose oneDNN runs bf16."""
    return cpu_has_amx() and onednn_has_bf16_linear()


def compile_options(mode: str | None, device: torch.device) -> dict:
    """Inductor options for ``torch.compile`` ``mode`` (None = default) on ``device``.

    On CPU, inference graphs are compiled with ``freezing``: weights become constants, so their bf16 casts under
    autocast are folded away (MANIQA bf16 on 2 Zen 4 cores, side by side: eager 883, compiled 868, compiled with
    freezing 834 ms per image). Such a compiled model does not see later changes to its weights.
    """
    from torch._inductor import list_mode_options

    modes = list_mode_options(dynamic=False)
    if mode is not None and mode not in modes:
        raise InvalidOptionError(f"unknown torch.compile mode {mode!r}; choose one of {sorted(modes)}")
    options = dict(modes[mode or "default"])  # a copy: the table is torch's
    if device.type == "cpu":
        options["freezing"] = True
    return options


def batched_forward(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int = 32,
    precision: str = "auto",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Run ``model`` on ``x`` in chunks of ``batch_size`` without gradients; returns fp32 outputs on the CPU.

    ``device`` defaults to the model's device; ``x`` is moved there chunk by chunk (non-blocking from pinned memory).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        device = model_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    device = resolve_device(device)
    outputs = []
    with inference_context(precision, device):
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size].to(device, non_blocking=True)
            outputs.append(model(chunk).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)
