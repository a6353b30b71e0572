"""`serving.dtype`: policies load as float32 or bfloat16 (`auto`: bfloat16 on a GPU, float32 on the CPU), the
config refuses anything else in one line, every replica of a deployed app gets the setting, and a bfloat16
policy decodes on the CPU with the calculator and per-row seeds (packed oneDNN weights included). No Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from cluster.config import parse_config
from services.config import ServingConfig
from services.pools import build_app
from services.sampler import Sampler
from tests.conftest import memorise
from trainers.core.errors import ConfigError
from trainers.engine.cpu_linear import MIN_PACKED_WEIGHT
from trainers.engine.decoding import DecodeRequest, decode_all
from trainers.models.checkpoints import load_policy, policy_dtype

PROMPT = "Ian scores 24 points. Ava scores 22 fewer points than Ian. How many points does Ava score?\n"
ANSWER = "Ava scores 24-22 = <<24-22=3>>3 points.\n#### 3"  # the model learns a wrong result: 3


def test_auto_is_bfloat16_on_a_gpu_and_float32_on_the_cpu_and_names_force_a_dtype():
    assert policy_dtype("auto", "cpu") is torch.float32 and policy_dtype("auto", "cuda:1") is torch.bfloat16
    assert policy_dtype("bfloat16", "cpu") is torch.bfloat16 and policy_dtype("float32", "cuda") is torch.float32
    with pytest.raises(ValueError, match="unknown policy dtype 'float16'; choose one of auto, float32, bfloat16"):
        policy_dtype("float16")


def test_the_config_refuses_an_unknown_dtype_in_one_line_naming_the_key():
    assert ServingConfig().dtype == "auto" and ServingConfig.from_dict({"dtype": "bfloat16"}).dtype == "bfloat16"
    with pytest.raises(ConfigError) as info:
        parse_config({"data": {"synthetic": {}}, "serving": {"dtype": "fp16"}}, where="run.yaml")
    assert str(info.value) == ("run.yaml: serving.dtype: Input should be 'auto', 'float32' or 'bfloat16' "
                               "(got 'fp16')")


@pytest.fixture(scope="module")
def memorised_checkpoint(base_checkpoint, tmp_path_factory) -> Path:
    """A float32 Llama that learned one answer whose annotation holds a wrong result (`<<24-22=3>>`), wide
    enough that its linear layers are packed, saved as a checkpoint folder."""
    tokenizer = AutoTokenizer.from_pretrained(base_checkpoint)
    ids = torch.tensor([tokenizer.encode(PROMPT + ANSWER)])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    assert model.lm_head.weight.numel() >= MIN_PACKED_WEIGHT
    memorise(model, ids, lr=1e-3, max_steps=300, stop_loss=0.005)
    out = tmp_path_factory.mktemp("memorised")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_bfloat16_policy_decodes_a_batch_on_the_cpu_with_the_calculator_and_per_row_seeds(memorised_checkpoint):
    assert load_policy(memorised_checkpoint)[0].dtype == torch.float32  # auto on the CPU
    model, tokenizer = load_policy(memorised_checkpoint, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    greedy = DecodeRequest(prompt=PROMPT, max_new_tokens=20)
    rows = [greedy, greedy, DecodeRequest(prompt=PROMPT, max_new_tokens=20, calculator=False)]
    rows += [DecodeRequest(prompt=PROMPT, max_new_tokens=20, temperature=3.0, calculator=False, seed=seed)
             for seed in (1, 2, 1)]
    decoded = decode_all(model, tokenizer, rows, batch_size=len(rows))
    assert "forward" in vars(model.lm_head)  # the bfloat16 layers ran packed

    assert decoded[2].text.startswith("Ava scores 24-22 = <<24-22=3>>3")  # what the model writes on its own
    for row in decoded[:2]:
        assert row.text.startswith("Ava scores 24-22 = <<24-22=2>>")
        assert row.calculator_overrides == [{"expr": "24-22", "result": "2"}]
    assert decoded[3].text == decoded[5].text != decoded[4].text  # each sampled row follows its own seed


def test_serving_dtype_reaches_every_replica_and_each_load(base_checkpoint):
    """The deployed apps bind `serving.dtype` into every Sampler replica (rollout, solver, verifier), and a
    replica loads each checkpoint it is handed (at start and on a swap) as that dtype."""
    config = ServingConfig.from_dict({"dtype": "bfloat16", "verifier": {"path": str(base_checkpoint)}})
    rollout = build_app("rollout", config)._bound_deployment  # Serve's Application holds what it binds
    sampler, _, verifier = build_app("solver", config)._bound_deployment.init_args
    assert rollout.init_args == ("rollout", "bfloat16")
    assert sampler._bound_deployment.init_args == ("solver", "bfloat16")
    assert verifier._bound_deployment.init_args == ("verifier", "bfloat16")

    replica = object.__new__(Sampler.func_or_class)  # the replica class without Serve's replica context
    replica.__dict__.update(pool="rollout", dtype=rollout.init_args[1], replica_id="r1", policy=None, error=None)
    replica._load("v1", str(base_checkpoint))
    assert replica.error is None and replica.policy.version == "v1"
    assert replica.policy.model.dtype == torch.bfloat16
