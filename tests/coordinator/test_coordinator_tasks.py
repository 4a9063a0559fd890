"""Task extraction: FLOPs add up to the model's analytic forward FLOPs, equal kernels merge."""

from __future__ import annotations

import dataclasses

import pytest

from tunefleet.coordinator.buckets import DEFAULT_BUCKETS, eval_dims
from tunefleet.coordinator.graph import KINDS, Phase, Quant, build_graph
from tunefleet.coordinator.lowering import graph_kernel
from tunefleet.coordinator.models import ModelConfig, ModelConfigError
from tunefleet.coordinator.presets import PRESETS
from tunefleet.coordinator.tasks import extract_tasks, model_tasks

FAMILY_PRESETS = ["llama-2-7b", "llama-3-8b", "llama-3-70b", "mistral-7b", "qwen2-7b",
                  "qwen2-0.5b", "gemma-2b", "gemma-7b", "phi-3-mini"]  # fmt: skip
DIMS = [
    (Phase.DECODE, {"b": 1, "m": 4096}),
    (Phase.DECODE, {"b": 16, "m": 1024}),
    (Phase.PREFILL, {"b": 1, "n": 2048, "m": 2048}),
    (Phase.PREFILL, {"n": 128, "m": 4096}),
]


def analytic_forward_flops(cfg: ModelConfig, dims: dict[str, int]) -> int:
    """2 x tokens x projection parameters (all layers and the LM head) plus attention's
    score and weighted-sum products, counted from the config alone."""
    b, n, m = dims["b"], dims["n"], dims["m"]
    h, kv, d, hid, inter = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size,
                            cfg.intermediate_size)  # fmt: skip
    per_layer = hid * h * d + 2 * hid * kv * d + h * d * hid + 3 * hid * inter
    dense = 2 * b * n * (cfg.num_layers * per_layer + cfg.vocab_size * hid)
    attention = cfg.num_layers * 2 * (2 * b * h * n * m * d)
    return dense + attention


@pytest.mark.parametrize("quant", list(Quant))
@pytest.mark.parametrize("name", FAMILY_PRESETS)
@pytest.mark.parametrize(("phase", "set_dims"), DIMS)
def test_task_flops_match_analytic(
    name: str, phase: Phase, set_dims: dict[str, int], quant: Quant
) -> None:
    cfg = PRESETS[name]
    dims = eval_dims(phase, set_dims)
    tasks = model_tasks(cfg, phase, quant)
    total = sum(t.weight * t.flops(dims) for t in tasks)
    expected = analytic_forward_flops(cfg, dims)
    assert abs(total - expected) / expected < 0.01, (total, expected)
    # the matmul part alone is exact: only norms, softmax and epilogues add to it
    assert total >= expected


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_layers_collapse_into_one_task_each(name: str) -> None:
    cfg = PRESETS[name]
    for phase in Phase:
        tasks = model_tasks(cfg, phase)
        weights = {t.name: t.weight for t in tasks}
        L = cfg.num_layers
        # the three norms of a pass are one workload
        assert weights["input_norm"] == 2 * L + 1
        assert tasks[[t.name for t in tasks].index("input_norm")].names == (
            "input_norm", "post_norm", "final_norm")  # fmt: skip
        for layer_task in ("qkv_proj+rope", "o_proj+attn_residual", "gate_up_proj+act",
                           "attn_scores+attn_softmax+attn_context"):  # fmt: skip
            assert weights[layer_task] == L
        assert weights["embed"] == 1
        # 5 kernels per layer, 2L+1 norms, the embedding and the LM head
        assert sum(t.weight for t in tasks) == 5 * L + (2 * L + 1) + 1 + 1
        assert len({t.workload_key for t in tasks}) == len(tasks)
        # a deeper model has the same workloads, only heavier
        deeper = model_tasks(dataclasses.replace(cfg, num_layers=L + 3), phase)
        assert [t.workload_key for t in deeper] == [t.workload_key for t in tasks]


def test_same_shapes_share_a_key_across_models() -> None:
    # Llama-3-8B and Mistral-7B share every layer shape; only the vocabulary differs.
    keys = {p: {t.name: t.workload_key for t in model_tasks(PRESETS[p], Phase.DECODE)}
            for p in ("llama-3-8b", "mistral-7b")}  # fmt: skip
    a, b = keys["llama-3-8b"], keys["mistral-7b"]
    assert a["o_proj+attn_residual"] == b["o_proj+attn_residual"]
    assert a["gate_up_proj+act"] == b["gate_up_proj+act"]
    assert a["lm_head"] != b["lm_head"]


def test_mha_o_proj_and_equal_denses_merge() -> None:
    # a model whose o_proj and down_proj have the same shape: one task of weight 2L
    cfg = dataclasses.replace(PRESETS["tiny"], intermediate_size=PRESETS["tiny"].hidden_size // 2,
                              num_heads=2, num_kv_heads=2, head_dim=64)  # fmt: skip
    tasks = model_tasks(cfg, Phase.DECODE)
    merged = [t for t in tasks if t.names == ("o_proj+attn_residual", "down_proj+mlp_residual")]
    assert merged and merged[0].weight == 2 * cfg.num_layers


def test_shapes_symbols_and_buckets() -> None:
    tasks = {t.name: t for t in model_tasks(PRESETS["llama-3-8b"], Phase.DECODE)}
    qkv = tasks["qkv_proj+rope"]
    assert qkv.kind == "dense" and qkv.op == "dense+rope"
    assert {k: str(v) for k, v in qkv.shape} == {"m": "b", "n": "6144", "k": "4096"}
    assert qkv.symbolic == ("b",)
    assert dict(qkv.buckets) == {"b": DEFAULT_BUCKETS[Phase.DECODE]["b"]}
    att = tasks["attn_scores+attn_softmax+attn_context"]
    assert att.kind == "attention" and att.symbolic == ("b", "m")
    prefill = {t.name: t for t in model_tasks(PRESETS["llama-3-8b"], Phase.PREFILL,
                                               buckets={"n": (64, 256)})}  # fmt: skip
    assert dict(prefill["lm_head"].buckets) == {"n": (64, 256)}
    assert dict(prefill["attn_scores+attn_softmax+attn_context"].buckets) == {
        "m": (4096,),
        "n": (64, 256),
    }
    assert {t.kind for t in prefill.values()} == {"dense", "attention", "norm", "embedding"}


def test_decode_bytes_match_the_anchor_layer() -> None:
    # Llama-3-8B decode b=1 kv=4096 moves ~453 MB per decoder layer (weights + kv cache)
    tasks = model_tasks(PRESETS["llama-3-8b"], Phase.DECODE)
    dims = eval_dims(Phase.DECODE, {"b": 1, "m": 4096})
    layer = sum(t.nbytes(dims) for t in tasks if t.weight == 32)
    assert 450e6 < layer < 456e6


def test_q4_turns_dense_into_q4_dense() -> None:
    dims = eval_dims(Phase.DECODE, {})
    plain = model_tasks(PRESETS["llama-3-8b"], Phase.DECODE)
    q4 = model_tasks(PRESETS["llama-3-8b"], Phase.DECODE, Quant.Q4)
    dense_ops = [t.op.split("+")[0] for t in q4 if t.kind == "dense"]
    assert dense_ops == ["q4_dense"] * 5
    w_plain = sum(t.weight * t.nbytes(dims) for t in plain if t.kind == "dense")
    w_q4 = sum(t.weight * t.nbytes(dims) for t in q4 if t.kind == "dense")
    assert 0.25 < w_q4 / w_plain < 0.3  # 4-bit weights + fp16 scale per 32 weights vs bf16
    keys = {t.workload_key for t in plain if t.kind == "dense"}
    assert keys.isdisjoint(t.workload_key for t in q4 if t.kind == "dense")
    same = {t.workload_key for t in plain if t.kind != "dense"}
    assert same == {t.workload_key for t in q4 if t.kind != "dense"}


def test_no_fusion_keeps_flops_and_adds_traffic() -> None:
    cfg = PRESETS["qwen2-7b"]
    dims = eval_dims(Phase.PREFILL, {"n": 512})
    fused = model_tasks(cfg, Phase.PREFILL)
    unfused = model_tasks(cfg, Phase.PREFILL, fusion=False)
    assert len(unfused) > len(fused)
    total = [sum(t.weight * t.flops(dims) for t in ts) for ts in (fused, unfused)]
    # the same up to the prompt attention's bookkeeping: in key tiles it sums one column
    # more (the weights' sum) and divides once per output instead of once per weight
    assert abs(total[0] - total[1]) <= 1e-4 * total[1]
    traffic = [sum(t.weight * t.nbytes(dims) for t in ts) for ts in (fused, unfused)]
    assert traffic[1] > traffic[0]
    ops = {t.op for t in unfused}
    assert {"rope", "add", "silu_mul", "softmax", "batch_matmul"} <= ops


def test_graph_calls_are_well_formed() -> None:
    for phase in Phase:
        g = build_graph(PRESETS["gemma-2b"], phase)
        produced = {"input_ids", "k_cache", "v_cache"}
        for c in g.calls:
            for t in c.inputs:
                assert t.name in produced or "." in t.name, (c.name, t.name)
            produced.add(c.output.name)
        assert g.symbols == (("b", "m") if phase is Phase.DECODE else ("m", "n"))
        assert {c.kind for c in g.calls} == set(KINDS)


def test_q4_needs_group_aligned_widths() -> None:
    odd = dataclasses.replace(PRESETS["tiny"], intermediate_size=688)
    with pytest.raises(ModelConfigError, match="k=688"):
        model_tasks(odd, Phase.DECODE, Quant.Q4)
    assert model_tasks(odd, Phase.DECODE)  # unquantised is fine


@pytest.mark.parametrize("phase", list(Phase))
def test_graph_level_keys_group_like_structural_hashes(phase: Phase) -> None:
    cfg = PRESETS["phi-3-mini"]
    ir_tasks = model_tasks(cfg, phase, fusion=False)
    graph_tasks = extract_tasks(build_graph(cfg, phase), fusion=False, lowering=graph_kernel)
    assert [(t.names, t.weight) for t in graph_tasks] == [(t.names, t.weight) for t in ir_tasks]
