"""Load and validate Hugging Face checkpoint folders: the one format every stage hands to the next."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainers.core.errors import CheckpointError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# What a policy's weights are loaded as for decoding and scoring: `auto` is bfloat16 on a GPU, float32 on the
# CPU; a name forces that dtype anywhere (`serving.dtype`, `benchmarks/sampler.py --dtype`).
POLICY_DTYPES = ("auto", "float32", "bfloat16")
DEFAULT_POLICY_DTYPE = "auto"


@dataclass(frozen=True, eq=False)
class Policy:
    """A loaded checkpoint labeled with the version it serves: what a replica decodes with. Compared and
    hashed by identity, so each load (each hot swap) is its own policy even when two share a version."""

    version: str
    checkpoint: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def validate_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Cheap structural check before anything loads it: a folder with a parseable config, weights and a
    tokenizer. Raises CheckpointError naming what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} is not a folder")
    try:
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder} has no config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {folder}: config.json is not valid JSON ({exc})") from None
    if not any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in WEIGHT_FILES):
        raise CheckpointError(f"checkpoint {folder} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not (folder / "tokenizer_config.json").is_file():
        raise CheckpointError(f"checkpoint {folder} has no tokenizer (tokenizer_config.json)")
    return folder


def validate_causal_lm(path: str | os.PathLike[str]) -> Path | str:
    """`validate_checkpoint` (for a cached hub id: its config is found), and the config names a causal LM: what
    `load_policy` loads and what a verifier scores with (its next-token probabilities). A folder of another
    kind fails here, in one line, before any replica or training worker loads weights. CheckpointError otherwise."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if _is_hub_id(path):
        from transformers import AutoConfig

        try:
            model_type = AutoConfig.from_pretrained(str(path), local_files_only=True).model_type
        except Exception as exc:  # not in the cache, or an unknown model type
            raise CheckpointError(f"checkpoint {path} is neither a folder nor a cached hub model "
                                  f"({str(exc).strip().splitlines()[0]})") from None
        folder: Path | str = str(path)
    else:
        folder = validate_checkpoint(path)
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(f"checkpoint {folder} is not a causal LM (model_type {model_type!r})")
    return folder


def policy_dtype(dtype: str = DEFAULT_POLICY_DTYPE, device: str = "cpu"):
    """The torch dtype a policy is loaded as on `device` (one of POLICY_DTYPES; ValueError otherwise)."""
    import torch

    if dtype not in POLICY_DTYPES:
        raise ValueError(f"unknown policy dtype {dtype!r}; choose one of {', '.join(POLICY_DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def load_policy(path: str | os.PathLike[str], device: str = "cpu", dtype: str = DEFAULT_POLICY_DTYPE):
    """Load (model, tokenizer) for decoding, weights as `policy_dtype(dtype, device)`. Any load failure becomes
    a CheckpointError, so a bad folder offered for a hot swap is refused with a message instead of crashing a
    replica."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = policy_dtype(dtype, device)
    folder = validate_checkpoint(path) if not _is_hub_id(path) else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(device).eval()
    except Exception as exc:  # a truncated safetensors file raises many different types
        raise CheckpointError(f"checkpoint {folder} failed to load: {type(exc).__name__}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def _is_hub_id(path: str | os.PathLike[str]) -> bool:
    """`org/name` that is not a local path: loaded from the user's HF cache, never downloaded by us."""
    text = str(path)
    return not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/"))
