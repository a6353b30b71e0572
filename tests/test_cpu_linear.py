"""Packed oneDNN linear weights for CPU decoding (trainers/engine/cpu_linear.py): same results as F.linear
(float32, and bfloat16 where the CPU has bfloat16 dot products), large layers packed at any row count and small
ones only for calls with many rows, joined layers (gate and up of a gated MLP) as one product, never stale after
the weights change, and out of the way of training."""

from __future__ import annotations

import torch
from torch import nn

from trainers.engine.cpu_linear import MIN_PACKED_WEIGHT, MIN_PACKED_WORK, JoinedLinear, pack_linears
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    big = nn.Linear(512, 512)  # above MIN_PACKED_WEIGHT: packed
    small = nn.Linear(512, 8, bias=False)  # below it: packed only for calls of many rows
    assert big.weight.numel() >= MIN_PACKED_WEIGHT > small.weight.numel()
    return nn.Sequential(big, nn.ReLU(), small)


def test_packed_layers_give_the_plain_layers_results_at_every_row_count():
    plain, packed = _model(), _model()
    assert pack_linears(packed) and pack_linears(packed)  # idempotent
    assert "forward" in vars(packed[0]) and "forward" in vars(packed[2])
    with torch.inference_mode():
        for shape in [(1, 512), (4, 512), (32, 1, 512), (3, 17, 512)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(packed(x), plain(x), rtol=1e-4, atol=1e-4)
    assert packed[0]._dpost_joined._packed is not None  # the large layer: packed from one row on
    assert packed[2]._dpost_joined._packed is None  # the small one: 51 rows x 4,096 weights is too little work
    many = torch.randn(MIN_PACKED_WORK // packed[2].weight.numel(), 512)
    with torch.inference_mode():
        torch.testing.assert_close(packed(many), plain(many), rtol=1e-4, atol=1e-4)
    assert packed[2]._dpost_joined._packed is not None


def test_joined_layers_are_the_layers_side_by_side_and_follow_their_weights():
    torch.manual_seed(0)
    layers = [nn.Linear(64, 16), nn.Linear(64, 24, bias=False), nn.Linear(64, 8)]
    joined = JoinedLinear(layers)
    for rows in (1, 3, MIN_PACKED_WORK // joined.weights + 1):  # F.linear, then the packed product
        x = torch.randn(rows, 64)
        for _ in range(2):
            with torch.no_grad():
                expected = torch.cat([layer(x) for layer in layers], dim=-1)
                torch.testing.assert_close(joined(x), expected, rtol=1e-5, atol=1e-5)
                layers[1].weight.mul_(2.0)  # in place, as an optimizer step: joined again
                layers[0].bias.add_(1.0)
        with torch.no_grad():
            joined(x)
            layers[2].weight = nn.Parameter(torch.randn(8, 64))  # replaced, nothing else changed: joined again
            torch.testing.assert_close(joined(x)[:, -8:], layers[2](x), rtol=1e-5, atol=1e-5)
    assert joined(torch.randn(2, 64)) is None  # gradients wanted: the layers' own forwards run
    with torch.no_grad():
        assert joined(torch.randn(2, 64, dtype=torch.float64)) is None


def test_a_weight_changed_in_place_is_packed_again_and_training_still_gets_gradients():
    model = _model()
    _check_repacked_and_trainable(model, model[0].weight, torch.randn(8, 512), lambda x: model[2](
        torch.relu(nn.functional.linear(x, model[0].weight, model[0].bias))))
    assert model[0].weight.grad.abs().sum() > 0


def _check_repacked_and_trainable(model: nn.Module, weight: torch.Tensor, x: torch.Tensor, plain) -> None:
    """After `weight` changes in place (what an optimizer step does) the packed `model` computes what the
    unpacked computation `plain` does, and a backward pass reaches the weights."""
    pack_linears(model)
    with torch.no_grad():
        before = model(x)
        weight.mul_(2.0)
        after, expected = model(x), plain(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)
    model(x).sum().backward()


def test_a_bfloat16_model_is_packed_where_the_cpu_has_bfloat16_dot_products_and_gives_the_same_results():
    plain, packed = _model().to(torch.bfloat16), _model().to(torch.bfloat16)
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert pack_linears(packed) == native and ("forward" in vars(packed[0])) == native
    with torch.inference_mode():
        x = torch.randn(32, 512, dtype=torch.bfloat16)
        torch.testing.assert_close(packed(x), plain(x), rtol=2e-2, atol=2e-2)


def test_a_model_of_another_dtype_is_left_alone():
    model = _model().to(torch.float16)
    assert not pack_linears(model)
    assert "forward" not in vars(model[0]) and "forward" not in vars(model[2])


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return LlamaMLP(LlamaConfig(hidden_size=256, intermediate_size=688))  # gate/up 256x688: above the minimum


def test_a_gated_mlp_runs_gate_and_up_as_one_packed_product_with_the_same_results():
    plain, fused = _mlp(), _mlp()
    assert fused.gate_proj.weight.numel() >= MIN_PACKED_WEIGHT
    assert pack_linears(fused) and "forward" in vars(fused)
    calls = []
    fused.gate_proj.register_forward_hook(lambda *a: calls.append("gate"))
    with torch.inference_mode():
        for shape in [(1, 256), (8, 256), (32, 1, 256), (3, 9, 256)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(fused(x), plain(x), rtol=1e-4, atol=1e-4)
    assert calls == []  # every shape, a single row included, ran gate and up as one packed product
    assert fused._dpost_joined._packed.shape != fused.gate_proj.weight.shape  # one packed weight for both


def test_a_gated_mlp_repacks_after_an_in_place_change_and_still_trains():
    mlp = _mlp()
    linear = nn.functional.linear
    _check_repacked_and_trainable(mlp, mlp.up_proj.weight, torch.randn(8, 256), lambda x: mlp.down_proj(
        mlp.act_fn(linear(x, mlp.gate_proj.weight)) * linear(x, mlp.up_proj.weight)))
    assert mlp.gate_proj.weight.grad.abs().sum() > 0 and mlp.up_proj.weight.grad.abs().sum() > 0
