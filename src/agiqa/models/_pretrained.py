"""Pretrained weight configurations: where weights live and what their scores mean (data, not code)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class PretrainedCfg:
    """One set of weights for an architecture, keyed `arch.tag` in the registry.

    `score_range` and `lower_better` describe the model's output so API, CLI and service report it the same way.
    """

    tag: str = ""
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    file: str | None = None
    url: str | None = None
    sha256: str | None = None
    official: bool = False  # an official checkpoint (needs `checkpoint_filter_fn`) rather than our safetensors
    train_dataset: str | None = None
    score_range: tuple[float, float] = (0.0, 1.0)
    lower_better: bool = False
    split_seed: int | None = None
    license: str | None = None
    paper_ids: tuple[str, ...] = ()
    origin_url: str | None = None
    notes: str | None = None
    model_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
