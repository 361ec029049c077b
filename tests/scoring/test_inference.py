"""`agiqa.scoring.inference`: the torch.compile options each device gets; weights kept in the scoring precision."""
from __future__ import annotations

import copy

import pytest
import torch

from agiqa.errors import AgiqaError
from agiqa.runtime import torch_dtype
from agiqa.scoring.inference import compile_options, inference_context, keep_low_precision_weights, prepare_model


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


def _tiny_models_and_inputs():
    """(name, model, inputs) for each model family, with score heads that are not stuck at a constant."""
    from agiqa.models import create_model

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    maniqa = create_model("test_maniqa").eval()
    ma_agiqa = create_model("test_ma_agiqa").eval()
    for model in (maniqa, ma_agiqa):
        with torch.no_grad():
            model.fc_score[3].bias.fill_(0.5)
    moe = create_model("test_moe_agiqa").eval()
    with torch.no_grad():
        moe.regressor.weight1.normal_(0, 0.5)
        moe.regressor.weight2.normal_(0, 0.5)
    image = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    semantic = torch.randn(3, 2, ma_agiqa.config.semantic_dim, generator=g)
    moe_inputs = dict(crops=torch.rand(2, 3, 3, 32, 32, generator=g),
                      prompt_image=torch.randn(2, 3, 32, 32, generator=g),
                      input_ids=torch.randint(0, 64, (2, 16), generator=g),
                      attention_mask=torch.ones(2, 16, dtype=torch.long))
    return [("maniqa", maniqa, (image,)), ("ma_agiqa", ma_agiqa, (image, semantic)), ("moe_agiqa", moe, moe_inputs)]


def _run(model, inputs, precision):
    with inference_context(precision, "cpu"):
        return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_weights_give_the_autocast_scores_bit_for_bit(precision):
    """Weights cast once give what autocast casting them on every call gives; the fp32 heads stay fp32."""
    for name, model, inputs in _tiny_models_and_inputs():
        reference = _run(model, inputs, precision)
        kept = prepare_model(copy.deepcopy(model), device="cpu", precision=precision)
        trunk = [layer for part in model.low_precision_modules for layer in kept.get_submodule(part).modules()
                 if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))]
        assert trunk and all(layer.weight.dtype == torch_dtype(precision) for layer in trunk), name
        fp32 = {n for n, p in kept.named_parameters() if p.dtype == torch.float32}
        assert any(n.startswith(("fc_score", "regressor")) for n in fp32), name  # the heads are not cast
        scores = _run(kept, inputs, precision)
        assert scores.dtype == torch.float32 and torch.equal(scores, reference), name
        assert not torch.equal(scores, _run(model, inputs, "fp32")), name  # the precision did reach the model


def test_fp32_and_models_without_the_list_keep_their_weights():
    layer = torch.nn.Linear(2, 2)
    assert keep_low_precision_weights(layer, "bf16") == 0 and layer.weight.dtype == torch.float32
    name, model, _ = _tiny_models_and_inputs()[0]
    assert keep_low_precision_weights(model, "fp32") == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_the_scorer_casts_the_models_it_builds_not_the_modules_it_is_given():
    from agiqa.models import create_model
    from agiqa.scoring.scorer import Scorer

    built = Scorer("test_maniqa", pretrained=False, device="cpu", precision="bf16")
    assert built.model.vit.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    given = create_model("test_maniqa").eval()
    Scorer(given, device="cpu", precision="bf16")
    assert {p.dtype for p in given.parameters()} == {torch.float32}


def _ops_called(model, inputs) -> set[str]:
    """Names of the aten / mkldnn ops one bf16 forward of ``model`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with Recorder() as recorder:
        _run(model, inputs, "bf16")
    return recorder.names


def test_bf16_linears_run_through_onednn_with_the_addmm_scores(monkeypatch):
    """On an AMX CPU the kept bf16 linears call oneDNN's fused-bias linear; scores are those of the addmm path bit for
    bit, the state dict keeps its names."""
    from agiqa.scoring import inference

    if not inference.prefers_onednn_bf16_linear():
        pytest.skip("not an AMX CPU with oneDNN bf16 kernels: the layers stay nn.Linear (the next test; which CPUs "
                    "use it: tests/test_runtime.py::test_auto_precision_on_each_cpu_kind_is_what_docs_say)")
    for name, model, inputs in _tiny_models_and_inputs():
        fast = prepare_model(copy.deepcopy(model), device="cpu", precision="bf16")
        with monkeypatch.context() as patch:
            patch.setattr(inference, "prefers_onednn_bf16_linear", lambda: False)
            plain = prepare_model(copy.deepcopy(model), device="cpu", precision="bf16")
        swapped = [n for n, m in fast.named_modules() if isinstance(m, inference.OneDNNLinear)]
        assert swapped and not any(isinstance(m, inference.OneDNNLinear) for m in plain.modules()), name
        assert not any(n.startswith(("fc_score", "regressor")) for n in swapped), name  # fp32 heads untouched
        assert "mkldnn._linear_pointwise" in _ops_called(fast, inputs), name
        assert "mkldnn._linear_pointwise" not in _ops_called(plain, inputs), name
        assert torch.equal(_run(fast, inputs, "bf16"), _run(plain, inputs, "bf16")), name
        assert list(fast.state_dict()) == list(model.state_dict()), name


def test_onednn_linear_is_a_plain_linear_off_amx_with_gradients_or_in_fp16(monkeypatch):
    from agiqa.scoring import inference

    name, model, inputs = _tiny_models_and_inputs()[0]
    monkeypatch.setattr(inference, "prefers_onednn_bf16_linear", lambda: False)
    kept = prepare_model(copy.deepcopy(model), device="cpu", precision="bf16")
    assert not any(isinstance(m, inference.OneDNNLinear) for m in kept.modules())
    monkeypatch.setattr(inference, "prefers_onednn_bf16_linear", lambda: True)
    fp16 = prepare_model(copy.deepcopy(model), device="cpu", precision="fp16")
    assert not any(isinstance(m, inference.OneDNNLinear) for m in fp16.modules())

    torch.manual_seed(0)
    layer, reference = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    reference.load_state_dict(layer.state_dict())
    layer.__class__ = inference.OneDNNLinear
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()  # fp32 weights, gradients on: nn.Linear's own forward
    reference(x.detach().requires_grad_()).sum().backward()
    assert torch.equal(layer.weight.grad, reference.weight.grad)
