"""`save_pretrained` / `from_pretrained` for every model family: ``config.json`` + ``model.safetensors``."""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin

from agiqa.models._builder import load_state_dict_file, load_state_dict_strict
from agiqa.models._config import without_weight_sources


class AgiqaHubMixin(PyTorchModelHubMixin):
    """Hub mixin whose loader rebuilds the model from its config dataclass (``cls.config_class``) and loads the
    weights strictly. Models set ``self._hub_mixin_config = config`` so that ``save_pretrained`` writes it."""

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str = "cpu",
        strict: bool = True,
        config: dict | None = None,
        **overrides,
    ):
        """Build from ``config.json`` (+ ``overrides``) and load ``model.safetensors`` strictly; no network for a
        local directory. Called by ``from_pretrained(dir_or_repo_id, **overrides)``."""
        if isinstance(config, cls.config_class):
            config = config.to_dict()
        values = dict(config or {})
        values.update(overrides)
        model = cls(cls.config_class.from_dict(without_weight_sources(values)))
        if os.path.isdir(model_id):
            weights = Path(model_id) / "model.safetensors"
        else:
            from huggingface_hub import hf_hub_download

            weights = hf_hub_download(model_id, "model.safetensors", revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, local_files_only=local_files_only, token=token)
        state_dict = load_state_dict_file(weights)
        if strict:
            load_state_dict_strict(model, state_dict, str(weights))
        else:
            model.load_state_dict(state_dict, strict=False)
        model.loaded_from(model_id)
        model.to(map_location)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, *, model_card_kwargs: dict | None = None,
                        **kwargs):
        """`config.json` + `model.safetensors` + README.md, a model card (`agiqa.models._card`; replaced on every
        save). `model_card_kwargs` may give `training` (data, split) and `metrics` (as in metrics.json)."""
        from agiqa.models._card import write_model_card

        Path(save_directory).mkdir(parents=True, exist_ok=True)
        write_model_card(self, save_directory, **(model_card_kwargs or {}))
        return super().save_pretrained(save_directory, **kwargs)

    def loaded_from(self, model_id: str) -> None:
        """Hook run after the weights of ``model_id`` are loaded (e.g. to find files saved beside them)."""
