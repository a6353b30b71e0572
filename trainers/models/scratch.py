"""Build a tokenizer and a causal LM from scratch, saved as a standard Hugging Face folder.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the task's own text, and the model is a
Llama config with random weights. The folder loads back with `AutoTokenizer` /
`AutoModelForCausalLM.from_pretrained`, like any hub model.

How the tokenizer splits numbers is the preset's declared `tokenizer` kind (`TOKENIZER_KINDS`):
- `single-digits`: every digit is its own token (the tiny/small presets the demo and tests use);
- `gpt2`: GPT-2's byte-level pre-tokenizer, a digit run is one piece that BPE merges freely (`4140` may
  become `4` + `140`), and `=`, `<<`, `>>` merge with neighbouring punctuation and spaces (`)=`, ` <<`, `>>.`);
- `llama3`: Llama-3's pre-tokenizer pattern, digit runs cut into chunks of at most 3 digits before BPE.
The `llama-100m*` presets are realistic in shape (about 100M parameters, a 32k vocabulary, 2,048 positions),
for plumbing and speed, not accuracy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from trainers.core.errors import ConfigError

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# Llama-3's split pattern (as in its tokenizer.json): letters, digit runs of 1-3, punctuation runs with one
# leading space, newlines, spaces.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

TOKENIZER_KINDS = ("single-digits", "gpt2", "llama3")


@dataclass(frozen=True)
class ModelPreset:
    """Architecture and tokenizer kind of a from-scratch model. `tiny` is for tests, `small` for the demo,
    `llama-100m` / `llama-100m-digits3` for measuring at a realistic size."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int  # the embedding's rows; the tokenizer is padded with unused entries up to it
    max_position_embeddings: int = 512
    num_key_value_heads: int | None = None  # grouped-query attention; None: one per attention head
    tokenizer: str = "single-digits"  # how numbers are split, one of TOKENIZER_KINDS

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ConfigError(f"unknown tokenizer kind {self.tokenizer!r}; choose one of {TOKENIZER_KINDS}")


_LLAMA_100M = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                   intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048)

PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192,
                        vocab_size=400),
    "small": ModelPreset(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
                         vocab_size=600),
    "llama-100m": ModelPreset(**_LLAMA_100M, tokenizer="gpt2"),
    "llama-100m-digits3": ModelPreset(**_LLAMA_100M, tokenizer="llama3"),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    if kind == "single-digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "llama3":
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ConfigError(f"unknown tokenizer kind {kind!r}; choose one of {TOKENIZER_KINDS}")


def _pad_vocab(tok: Tokenizer, vocab_size: int) -> Tokenizer:
    """Fill the BPE vocabulary up to `vocab_size` with `<unusedN>` entries no merge produces, so every row of
    the embedding has a token (a task's text alone supports a few thousand merges). They are plain vocabulary,
    not added tokens: thousands of added tokens make every tokenizer load take seconds."""
    size = tok.get_vocab_size()
    if size >= vocab_size:
        return tok
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(size, vocab_size)})
    return Tokenizer.from_str(json.dumps(data))


def build_tokenizer(texts: Iterable[str], vocab_size: int, kind: str = "single-digits",
                    max_length: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, numbers pre-split as `kind` says (see the module docstring)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(kind)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if kind != "single-digits":  # the tiny/small tokenizers stay exactly as trained
        tok = _pad_vocab(tok, vocab_size)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, padding_side="left", model_max_length=max_length)


def model_config(spec: ModelPreset, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The Llama config of a preset's shape over `tokenizer`'s vocabulary."""
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads or spec.num_attention_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )


def build_preset_tokenizer(preset: str, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    spec = get_preset(preset)
    return build_tokenizer(texts, spec.vocab_size, spec.tokenizer, spec.max_position_embeddings)


def build_tiny_model(out_dir: str | Path, preset: str, texts: Iterable[str], seed: int = 0) -> Path:
    """Train a tokenizer on `texts`, initialise a Llama of the preset's shape, and `save_pretrained` both."""
    import torch

    spec = get_preset(preset)
    tokenizer = build_preset_tokenizer(preset, texts)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config(spec, tokenizer))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "dpost_preset.json").write_text(json.dumps({"preset": preset, **asdict(spec)}))
    return out
