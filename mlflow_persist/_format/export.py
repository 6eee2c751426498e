"""`export_checkpoint`: a verified checkpoint's weights in a format its framework loads natively, with no
mlflow-persist needed to read them.

- `safetensors`: `model.safetensors`, the model's state dict (tensors that share memory, such as tied
  embeddings, are written once each, as copies), loadable with `load_state_dict(safetensors.torch.load_file(path))`
  and by every safetensors reader. The version, step and category travel in the file's metadata.
- `hf`: a Hugging Face model folder (`config.json` and `model.safetensors`) that `from_pretrained` loads. It needs
  the model's config, which the Transformers callback keeps with every checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlflow_persist._format.payload import CheckpointState
from mlflow_persist._format.shards import is_sharded
from mlflow_persist.errors import ConfigError

__all__ = ["EXPORT_FORMATS", "MODEL_CONFIG_KEY", "export_checkpoint"]

EXPORT_FORMATS = ("safetensors", "hf")
#: Where a checkpoint's `extra_state` keeps a Hugging Face model's config (its JSON, as `config.json` holds it).
MODEL_CONFIG_KEY = "model_config_json"
WEIGHTS_FILE = "model.safetensors"


def export_checkpoint(state: CheckpointState, directory: Path, export_format: str) -> list[Path]:
    """Write `state`'s weights into `directory` as `export_format`; returns the files written."""
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(f"Unknown export format {export_format!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    if is_sharded(state.model_state):
        raise ConfigError(
            f"{state.name} v{state.version} is a sharded checkpoint (every rank's shards, in its shards/ folder), "
            "which export cannot gather; convert that folder with torch.distributed.checkpoint.format_utils."
            "dcp_to_torch_save, or export a version saved with the full state."
        )
    config_json = _model_config(state) if export_format == "hf" else None
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ConfigError(
            "Exporting needs the safetensors package; install it with `pip install safetensors`."
        ) from None
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    metadata = {
        "format": "pt",
        "mlflow_persist.model": str(state.name),
        "mlflow_persist.version": str(state.version),
        "mlflow_persist.step": str(state.step),
        "mlflow_persist.category": str(state.category),
    }
    save_file(_unshared(state.model_state), str(weights), metadata=metadata)
    written = [weights]
    if config_json is not None:
        config = directory / "config.json"
        config.write_text(json.dumps(json.loads(config_json), indent=2, sort_keys=True) + "\n")
        written.append(config)
    return written


def _model_config(state: CheckpointState) -> str:
    extra = state.extra_state
    if isinstance(extra, Mapping) and isinstance(extra.get(MODEL_CONFIG_KEY), str):
        return str(extra[MODEL_CONFIG_KEY])
    raise ConfigError(
        f"v{state.version} of {state.name} holds no Hugging Face model config (only the Transformers callback keeps "
        "it with a checkpoint); export it with --format safetensors."
    )


def _unshared(model_state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that share no memory (safetensors refuses shared storage, such as tied weights)."""
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model_state.items():
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        if pointer in seen:
            tensor = tensor.clone()
        elif pointer != -1:
            seen.add(pointer)
        tensors[key] = tensor
    return tensors
