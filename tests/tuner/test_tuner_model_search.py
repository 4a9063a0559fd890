"""Features, the XGBoost cost model on real measurements, and the strategies' contracts."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tunefleet.ir import ops
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.cost_model import (
    CostModelError,
    RandomModel,
    Sample,
    create_cost_model,
    normalised_throughput,
)
from tunefleet.tuner.features import FEATURE_COUNT, extract
from tunefleet.tuner.model_xgb import XGBModel
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.search_evolutionary import EvolutionarySearch
from tunefleet.tuner.space import SpaceContext, SpaceGenerator
from tunefleet.tuner.strategy import StrategyError, create_strategy
from tunefleet.tuner.tuning import measure_batch
from tunefleet.workers import BuildInput, MeasureConfig, Problem
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cpu(cores=2))
DIMS = {"m": 16, "n": 64, "k": 256}


def _sampler() -> SpaceSampler:
    func = ops.get_op("dense").build(DIMS, "float32")
    return SpaceSampler(func, SpaceGenerator().generate(func, CTX), CTX, default_postprocs("cpu"))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_features_are_fixed_length_and_tell_schedules_apart() -> None:
    sampler = _sampler()
    cands = sampler.sample_unique(random.Random(0), 12, set())
    feats = np.stack([c.features for c in cands])
    assert feats.shape == (len(cands), FEATURE_COUNT) and np.isfinite(feats).all()
    assert len({f.tobytes() for f in feats}) > len(cands) // 2
    assert np.array_equal(extract(ops.get_op("dense").build(DIMS, "float32")), extract(
        ops.get_op("dense").build(DIMS, "float32")))  # fmt: skip


def test_normalised_throughput_is_per_workload() -> None:
    f = np.zeros(3)
    samples = [Sample(f, "a", "1", 2.0), Sample(f, "a", "2", 4.0), Sample(f, "b", "3", 10.0),
               Sample(f, "a", "4", None)]  # fmt: skip
    assert normalised_throughput(samples).tolist() == [1.0, 0.5, 1.0, 0.0]


def test_xgb_learns_measured_times_and_round_trips(tmp_path: Path, executor, cpu) -> None:
    sampler = _sampler()
    cands = sampler.sample_unique(random.Random(3), 24, set())
    config = MeasureConfig(guard_noise=False, repeats=3, warmup_ms=0.5, min_repeat_ms=0.3)
    results = measure_batch(
        executor, [BuildInput(cpu, workload=sampler.func, trace=c.trace_json) for c in cands],
        Problem.create("dense", DIMS, "float32"), config,
    )  # fmt: skip
    samples = [
        Sample(c.features, "w", c.trace_hash, r.median_ms if r.ok else None)
        for c, r in zip(cands, results, strict=True)
    ]
    model = XGBModel(min_samples=8)
    assert not model.trained
    model.update(samples)
    assert model.trained
    feats = np.stack([s.features for s in samples])
    target = normalised_throughput(samples)
    assert _spearman(model.predict(feats), target) > 0.6
    path = tmp_path / "m.npz"
    model.save(path)
    again = XGBModel(min_samples=8)
    again.load(path)
    assert np.allclose(again.predict(feats), model.predict(feats))
    model.update(samples[:3])  # duplicates are ignored
    assert len(model.samples) == len(samples)


def test_untrained_and_random_models_score_every_row() -> None:
    feats = np.zeros((5, FEATURE_COUNT))
    assert len(RandomModel(0).predict(feats)) == 5
    assert len(XGBModel().predict(feats)) == 5
    with pytest.raises(CostModelError, match="unknown cost model"):
        create_cost_model("mlp")


@pytest.mark.parametrize("name", ["random", "evolutionary"])
def test_strategies_never_propose_measured_traces(name: str) -> None:
    sampler = _sampler()
    measured = {c.trace_hash for c in sampler.sample_unique(random.Random(1), 10, set())}
    model = RandomModel(0)
    strategy = create_strategy(name, seed=4)
    batch = strategy.generate(sampler, model, measured, 8)
    assert len(batch) == 8
    hashes = [c.trace_hash for c in batch]
    assert len(set(hashes)) == 8 and not set(hashes) & measured


def test_evolution_with_a_trained_model_prefers_high_scores() -> None:
    sampler = _sampler()
    pool = sampler.sample_unique(random.Random(2), 30, set())
    # a model that likes wide vector lanes (feature 3 of the heaviest store): a real XGBoost
    # fit on a known target, so the search's ranking can be checked
    model = XGBModel(min_samples=4, num_rounds=30)
    model.update([Sample(c.features, "w", c.trace_hash, 1.0 / (1.0 + c.features[3]))
                  for c in pool])  # fmt: skip
    search = EvolutionarySearch(seed=0, population_size=24, genetic_num_iters=2, eps_greedy=0.0)
    search.notify([(1.0, c.trace) for c in pool[:4]])
    batch = search.generate(sampler, model, set(), 6)
    chosen = np.mean([c.features[3] for c in batch])
    random_mean = np.mean([c.features[3] for c in pool])
    assert chosen >= random_mean


def test_unknown_strategy() -> None:
    with pytest.raises(StrategyError, match="choose one of"):
        create_strategy("annealing")
