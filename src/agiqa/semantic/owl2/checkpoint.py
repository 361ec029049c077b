"""Load a released mPLUG-Owl2 checkpoint folder unchanged, and save a converted safetensors copy.

A released folder (MAGAer13/mplug-owl2-llama2-7b, q-future/one-align, ...) holds config.json, the weights as
`pytorch_model.bin` / `model.safetensors` or their `-0000k-of-0000n` shards with an `.index.json`, tokenizer.model
and preprocessor_config.json. Loading never holds two copies of the 8.2 B parameters: the model is built on the meta
device, then each shard is read (safetensors, or `.bin` memory-mapped with `weights_only=True`), cast to the compute
dtype on the target device and assigned in place, one shard at a time. Every parameter must be found with the shape
the config implies, and every tensor in the files must have a place; the only keys tolerated beyond the model's are
the `rotary_emb.inv_freq` buffers older transformers saved (recomputed here).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from agiqa.semantic.base import SemanticEncoderError
from agiqa.semantic.owl2.configuration import Owl2Config
from agiqa.semantic.owl2.modeling import MplugOwl2ForCausalLM, sincos_1d, sincos_2d

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
COMPANION_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
                   "generation_config.json")
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class Owl2CheckpointError(SemanticEncoderError):
    """The weight files do not match the architecture the config describes (missing, unexpected, wrong shape)."""


def weight_files(folder: str | Path) -> list[Path]:
    """The checkpoint's weight files, safetensors preferred over `.bin` when a folder has both."""
    folder = Path(folder)
    for index_name, single in zip(WEIGHT_INDEXES, SINGLE_FILES):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise Owl2CheckpointError(f"{index}: unreadable shard index ({err})") from None
            shards = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise Owl2CheckpointError(f"{folder}: shards named in {index_name} are missing: {missing}")
            return shards
        if (folder / single).is_file():
            return [folder / single]
    raise Owl2CheckpointError(f"{folder}: no weights (expected {' / '.join(SINGLE_FILES)} or sharded files with "
                              f"{' / '.join(WEIGHT_INDEXES)})")


def read_shard(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one weight file; `.bin` pickles are read with weights_only=True and memory-mapped."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        except SafetensorError as err:
            raise Owl2CheckpointError(f"{path}: unreadable safetensors file ({err})") from None
        return
    from agiqa._files import torch_load_weights_only

    try:
        state = torch_load_weights_only(path, mmap=True)
    except RuntimeError:  # an old-format (non-zip) pickle cannot be memory-mapped
        state = torch_load_weights_only(path)
    if not isinstance(state, dict):
        raise Owl2CheckpointError(f"{path}: not a state dict")
    yield from state.items()


def build_empty(config: Owl2Config) -> MplugOwl2ForCausalLM:
    """The model with every parameter on the meta device (no memory): the layout a checkpoint must fill."""
    with torch.device("meta"):
        return MplugOwl2ForCausalLM(config)


def load_model(folder: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> MplugOwl2ForCausalLM:
    """The released folder's model in eval mode, weights in `dtype` on `device`, gradients off."""
    folder = Path(folder)
    config = Owl2Config.from_pretrained(folder)
    model = build_empty(config)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    found: set[str] = set()
    unexpected, wrong_shape = [], []
    for shard in weight_files(folder):
        batch = {}
        for name, tensor in read_shard(shard):
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if name not in expected:
                unexpected.append(name)
            elif tuple(tensor.shape) != tuple(expected[name]):
                wrong_shape.append(f"{name} {tuple(tensor.shape)} (config implies {tuple(expected[name])})")
            else:
                batch[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        model.load_state_dict(batch, strict=False, assign=True)
        found.update(batch)
        del batch
    _fill_position_tables(model, found, device, dtype)
    missing = sorted(set(expected) - found - _position_table_names(model))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} of the wrong shape (e.g. {wrong_shape[:2]})")
    if problems:
        raise Owl2CheckpointError(f"{folder}: the weights do not fit the mPLUG-Owl2 layout its config.json "
                                  f"describes: {'; '.join(problems)}")
    return model.eval().requires_grad_(False)


def _position_table_names(model: MplugOwl2ForCausalLM) -> set[str]:
    return {name for name, _ in model.named_buffers() if name.endswith(("q_pos_embed", "k_pos_embed"))}


def _fill_position_tables(model: MplugOwl2ForCausalLM, found: set[str], device, dtype) -> None:
    """The abstractor's fixed sin-cos tables, computed where the files did not carry them."""
    abstractor = model.config.abstractor
    for name in _position_table_names(model) - found:
        module = model.get_submodule(name.rsplit(".", 1)[0])
        d = abstractor.hidden_size
        table = (sincos_1d(d, torch.arange(abstractor.num_learnable_queries)) if name.endswith("q_pos_embed")
                 else sincos_2d(d, abstractor.grid_size))
        setattr(module, name.rsplit(".", 1)[1], table.to(device=device, dtype=dtype))


def save_pretrained(model: MplugOwl2ForCausalLM, out: str | Path, source: str | Path | None = None,
                    max_shard_size: str = "5GB") -> Path:
    """Write the model as sharded safetensors in the released naming (config.json + index), with the tokenizer and
    processor files copied from `source` (the folder it was loaded from). Loads back with `load_model`."""
    from huggingface_hub import save_torch_state_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)
    if source is not None:
        for name in COMPANION_FILES:
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, out / name)
    return out


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
