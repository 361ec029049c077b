"""A tiny mPLUG-Owl2 checkpoint in the released folder layout, with the weights the parity fixture was made with.

`tests/semantic/fixtures/mplug_owl2/` holds what benchmarks/parity_mplug_owl2/official_side.py produced with the
RELEASED code (X-PLUG/mPLUG-Owl, transformers 4.31): the tiny config, tokenizer and processor files, three images and
`official_outputs.safetensors` (the official forward's numbers). The weights themselves are not stored: both sides
rebuild them from the parameter names with `recipe_weights`.
"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "mplug_owl2"
COMPANIONS = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")


def recipe_value(name: str, shape) -> torch.Tensor:
    """The parity fixture's weight for parameter `name`: N(0, 0.05^2) seeded by crc32(name); 1-D norm gains
    (names with "norm" or "ln" ending in ".weight") are 1 + that."""
    value = 0.05 * torch.randn(tuple(shape), generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
    is_norm = len(shape) == 1 and ("norm" in name or "ln" in name)
    return 1 + value if is_norm and name.endswith(".weight") else value


def recipe_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter by `recipe_value`, every buffer (the abstractor's sin-cos tables) as built."""
    state = {name: recipe_value(name, p.shape) for name, p in model.named_parameters()}
    state.update({name: b.clone() for name, b in model.named_buffers()})
    return state


def tiny_config_dict() -> dict:
    return json.loads((FIXTURE / "config.json").read_text())


def write_checkpoint(folder: Path, config: dict | None = None, shards: int = 3, fmt: str = "bin",
                     extra: dict[str, torch.Tensor] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A checkpoint folder as the release lays it out: config.json, weights in `shards` files with their index
    (`pytorch_model-0000k-of-0000n.bin` or `model-...safetensors`), the rotary `inv_freq` buffers transformers 4.31
    saves, and the fixture's tokenizer and processor files. `extra` adds tensors, `drop` removes names."""
    from agiqa.semantic.owl2 import MplugOwl2ForCausalLM, Owl2Config

    folder.mkdir(parents=True, exist_ok=True)
    config = config or tiny_config_dict()
    (folder / "config.json").write_text(json.dumps(config))
    parsed = Owl2Config.from_dict(config)
    state = recipe_weights(MplugOwl2ForCausalLM(parsed))
    for layer in range(parsed.num_hidden_layers):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(parsed.head_dim // 2)
    state.update(extra or {})
    for name in drop:
        del state[name]
    names = list(state)
    chunks = [names[i::shards] for i in range(shards)]
    weight_map = {}
    for k, chunk in enumerate(chunks, start=1):
        if fmt == "bin":
            file = f"pytorch_model-{k:05d}-of-{shards:05d}.bin"
            torch.save({n: state[n] for n in chunk}, folder / file)
        else:
            from safetensors.torch import save_file

            file = f"model-{k:05d}-of-{shards:05d}.safetensors"
            save_file({n: state[n].contiguous() for n in chunk}, str(folder / file))
        weight_map.update({n: file for n in chunk})
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    for name in COMPANIONS:
        shutil.copy2(FIXTURE / name, folder / name)
    return folder


def fixture_images():
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in sorted((FIXTURE / "images").glob("*.png"))]
