"""Model cards: the README.md every saved model directory gets (architecture, configuration, training data and
split, metrics, how to load), rendered by huggingface_hub's `ModelCard` from one template."""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}

## Architecture

- architecture: `{{ architecture }}` (class `{{ class_name }}`), {{ parameters }} parameters
- papers: {{ papers }}
- input: {{ inputs }}
- experts: {{ experts }}

## Configuration

```json
{{ config_json }}
```

## Training data and split

{{ training }}

## Metrics

{{ metrics }}

## How to load

```python
from agiqa.models import create_model, saved_architecture
model = create_model(saved_architecture("{{ folder }}"), pretrained="{{ folder }}")
# or score images directly:
import agiqa
scores = agiqa.create_scorer("{{ folder }}").score(["a.png", "b.png"]{{ prompt_argument }}).scores
```

```bash
agiqa score {{ folder }} images/ --out scores.csv{{ prompt_flag }}
agiqa serve {{ folder }}          # browser page at http://127.0.0.1:8000/
```
"""

PAPERS = {"maniqa": "MANIQA (arXiv:2204.08958)", "ma_agiqa": "MA-AGIQA (arXiv:2404.17762)",
          "moe_agiqa": "MoE-AGIQA (CVPR-W 2024)"}
NOT_TRAINED_HERE = ("Not recorded: this directory was not written by `agiqa train` (converted from an official "
                    "checkpoint, or saved by hand).")


def model_card(model: nn.Module, folder: str | os.PathLike, training: dict | None = None,
               metrics: dict | None = None):
    """A `huggingface_hub.ModelCard` for `model` saved in `folder`; `training` (dataset, root, target, split,
    sizes) and `metrics` (`overall` + `per_generator`, as in metrics.json) come from `agiqa train`."""
    from huggingface_hub import ModelCard, ModelCardData

    from agiqa.models._factory import config_architecture, expert_names

    folder = Path(folder)
    config = model.config.to_dict()
    architecture = family = config_architecture(config)
    uses_text = bool(getattr(model.config, "use_text", False))
    data = ModelCardData(library_name="agiqa", tags=["image-quality-assessment", "ai-generated-images",
                                                     family.replace("_", "-")])
    return ModelCard.from_template(
        data, template_str=CARD_TEMPLATE, title=f"{architecture} ({folder.name})",
        summary=("A quality model for AI-generated images, saved by agiqa: `config.json` (the configuration "
                 "below) + `model.safetensors` (weights, loaded strictly)."),
        architecture=architecture, class_name=type(model).__name__,
        parameters=f"{sum(p.numel() for p in model.parameters()):,}",
        papers=PAPERS.get(family, "none recorded"),
        inputs=_inputs(model, uses_text), experts=", ".join(expert_names(model)) or "none (no gate to explain)",
        config_json=json.dumps(config, indent=2, sort_keys=True, default=str),
        training=_training(training), metrics=_metrics(metrics), folder=folder.as_posix(),
        prompt_argument=", prompts=[\"a prompt\", \"another prompt\"]" if uses_text else "",
        prompt_flag=" --prompts prompts.csv" if uses_text else "")


# The training labels' distribution, saved beside config.json by `agiqa train` and read by the scorer
# (`agiqa.scoring.distribution`) to give every score a percentile among the training images.
MOS_DISTRIBUTION_FILE = "mos_distribution.json"


def write_mos_distribution(folder: str | os.PathLike, distribution: dict) -> Path:
    """Write `folder`/mos_distribution.json in one step (a temporary file renamed over it)::

        {"mos_quantiles": [101 floats],   # 0 %, 1 %, ..., 100 % quantiles of the training MOS (the first target's)
         "mos_range": [min, max],         # of the training MOS (the first target's)
         "dataset": "agiqa3k", "n_images": 2102, "target": "quality",
         "per_target": {"quality": {"mos_quantiles": [...], "mos_range": [...]}, ...}}   # multi-target models only
    """
    path = Path(folder) / MOS_DISTRIBUTION_FILE
    tmp = path.with_name(f".{MOS_DISTRIBUTION_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(distribution, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def write_model_card(model: nn.Module, folder: str | os.PathLike, training: dict | None = None,
                     metrics: dict | None = None) -> Path:
    """Write (or replace) `folder`/README.md."""
    path = Path(folder) / "README.md"
    model_card(model, folder, training, metrics).save(path)
    return path


def _inputs(model: nn.Module, uses_text: bool) -> str:
    size = model.config.img_size
    if hasattr(model, "processor"):
        text = (f"RGB image, zero-padded to at least {size}x{size} and cut into {model.config.test_crops} seeded "
                "crops whose scores are averaged (the processor of the released code)")
    else:
        text = f"RGB image, resized to {size}x{size} by the model's preprocessing"
    from agiqa.models._factory import needs_semantic

    if needs_semantic(model):
        text += "; semantic features of a VLM (feature cache or `--encoder`)"
    return text + ("; the image's generation prompt" if uses_text else "")


def _training(training: dict | None) -> str:
    if not training:
        return NOT_TRAINED_HERE
    return "\n".join(f"- {key}: {value}" for key, value in training.items())


def _metrics(metrics: dict | None) -> str:
    if not metrics or "overall" not in metrics:
        return "No evaluation recorded with this model."
    from agiqa.metrics import format_metrics_table

    rows = {"overall": metrics["overall"], **metrics.get("per_generator", {})}
    return ("Test split (PLCC and RMSE after the official 4-parameter logistic fit; SRCC and KRCC on raw "
            "scores):\n\n" + format_metrics_table(rows))
