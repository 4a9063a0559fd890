"""Dispatch on symbolic shapes: bucket ranges, and sizes inside, between and at the edges of
buckets run the kernel of the bucket that holds them and match the reference."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_models import BUCKETS, tiny
from test_runtime_models import generate_and_compare

from tunefleet.runtime import CompileOptions, compile_model, load_model
from tunefleet.runtime.dispatch import UNBOUNDED, bucket_index, bucket_ranges, in_range
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.workers.targets import detect_cpu


def test_bucket_ranges_cover_every_size_once() -> None:
    assert bucket_ranges([16, 1, 4]) == [(1, 1), (2, 4), (5, UNBOUNDED)]
    for size, index in [(1, 0), (2, 1), (4, 1), (5, 2), (16, 2), (17, 2), (10**6, 2)]:
        assert bucket_index([1, 4, 16], size) == index, size
    assert in_range(7, 5, UNBOUNDED) and not in_range(4, 5, 16) and not in_range(17, 5, 16)
    with pytest.raises(RuntimeModelError, match="at least 1"):
        bucket_index([1, 4], 0)
    with pytest.raises(RuntimeModelError, match="positive"):
        bucket_ranges([0, 4])


@pytest.fixture(scope="module")
def model(tmp_path_factory, build_config, family_weights):
    folder = tmp_path_factory.mktemp("dispatch")
    compile_model(CompileOptions(tiny("qwen2"), detect_cpu(), str(folder), build_config,
                                 buckets=BUCKETS))  # fmt: skip
    return load_model(folder, family_weights["qwen2"], threads=1)


# decode b buckets (1, 4): 1 is the first edge, 2 and 3 lie between, 4 the edge, 5 above
@pytest.mark.parametrize("batch", [1, 2, 4, 5])
def test_decode_batches_in_and_between_buckets(model, family_weights, batch) -> None:
    assert generate_and_compare(model, family_weights["qwen2"], batch, 3, steps=2) <= 1e-3


# prefill n buckets (8, 32): edges 1, 8, 9, 32 and 33 beyond the last representative
@pytest.mark.parametrize("prompt", [1, 8, 9, 32, 33])
def test_prefill_lengths_at_bucket_edges(model, family_weights, prompt) -> None:
    assert generate_and_compare(model, family_weights["qwen2"], 1, prompt, steps=1) <= 1e-3


def test_each_size_picks_the_bucket_that_holds_it(model) -> None:
    manifest = model.manifest
    dense = manifest.task_for("prefill", "down_proj+mlp_residual")
    picks = {n: model.choose(dense, {"n": n})[0].bucket["n"] for n in (1, 8, 9, 32, 33, 500)}
    assert picks == {1: 8, 8: 8, 9: 32, 32: 32, 33: 32, 500: 32}
    att = manifest.task_for("decode", "attn_scores+attn_softmax+attn_context")
    kernel, call_dims = model.choose(att, {"b": 3, "m": 200})
    assert kernel.bucket == {"b": 4, "m": 64} and call_dims == {"b": 3, "m": 200}


def test_a_prompt_longer_than_the_maximum_is_refused(model) -> None:
    session = model.session(batch=1, max_len=12, max_prompt=10)
    with pytest.raises(RuntimeModelError, match="11 tokens is longer than the maximum 10"):
        session.prefill(np.zeros((1, 11), dtype=np.int64))
    session.prefill(np.zeros((1, 10), dtype=np.int64))
    session.decode(np.zeros(1, dtype=np.int64))
    session.decode(np.zeros(1, dtype=np.int64))
    with pytest.raises(RuntimeModelError, match="maximum length 12"):
        session.decode(np.zeros(1, dtype=np.int64))
