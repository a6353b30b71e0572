"""Build a tokenizer and a small causal LM from scratch, saved as a standard Hugging Face folder.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the task's own text with every digit a
single token (so the calculator can force any result), and the model is a Llama config with random weights.
The folder loads back with `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained`, like any hub model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainers.core.errors import ConfigError

EOS = "<|endoftext|>"
PAD = "<|pad|>"


@dataclass(frozen=True)
class ModelPreset:
    """Architecture of a from-scratch model. `tiny` is for tests, `small` for the demo."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 512


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
                        vocab_size=400),
    "small": ModelPreset(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
                         vocab_size=600),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; digits are split one per token before BPE sees them."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, padding_side="left", model_max_length=512)


def build_tiny_model(out_dir: str | Path, preset: str, texts: Iterable[str], seed: int = 0) -> Path:
    """Train a tokenizer on `texts`, initialise a Llama of the preset's shape, and `save_pretrained` both."""
    import torch

    spec = get_preset(preset)
    tokenizer = build_tokenizer(texts, spec.vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_attention_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "dpost_preset.json").write_text(__import__("json").dumps({"preset": preset, **asdict(spec)}))
    return out
