"""The XGBoost cost model: gradient-boosted trees regressing normalised throughput.

It keeps every sample it was given (deduplicated by workload and trace hash), retrains from
scratch when new samples arrive, and answers random scores until `min_samples` successful
measurements exist. `save` writes the samples to one .npz per target; `load` retrains from
them, so nothing is unpickled.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xgboost as xgb

from .cost_model import CostModel, CostModelError, Sample, normalised_throughput


class XGBModel(CostModel):
    """reg:squarederror on best/median per workload, retrained on every update."""

    name = "xgb"

    def __init__(
        self,
        seed: int = 0,
        min_samples: int = 8,
        num_rounds: int = 60,
        max_depth: int = 6,
        eta: float = 0.2,
    ) -> None:
        self.seed = seed
        self.min_samples = min_samples
        self.num_rounds = num_rounds
        self.params = {
            "objective": "reg:squarederror",
            "max_depth": max_depth,
            "eta": eta,
            "min_child_weight": 1,
            "subsample": 1.0,
            "seed": seed,
            "nthread": 1,
            "verbosity": 0,
        }
        self._rng = random.Random(seed)
        self._samples: list[Sample] = []
        self._seen: set[tuple[str, str]] = set()
        self._booster: xgb.Booster | None = None

    @property
    def trained(self) -> bool:
        return self._booster is not None

    @property
    def samples(self) -> list[Sample]:
        return list(self._samples)

    def update(self, samples: Sequence[Sample]) -> None:
        fresh = [s for s in samples if (s.workload_key, s.trace_hash) not in self._seen]
        if not fresh:
            return
        for s in fresh:
            self._seen.add((s.workload_key, s.trace_hash))
            self._samples.append(s)
        self._train()

    def _train(self) -> None:
        ok = sum(1 for s in self._samples if s.median_ms is not None)
        if ok < self.min_samples:
            return
        x = np.stack([s.features for s in self._samples]).astype(np.float32)
        y = normalised_throughput(self._samples)
        data = xgb.DMatrix(x, label=y)
        self._booster = xgb.train(self.params, data, num_boost_round=self.num_rounds)

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self._booster is None:
            return np.array([self._rng.random() for _ in range(len(features))])
        if len(features) == 0:
            return np.zeros(0)
        return self._booster.predict(xgb.DMatrix(np.asarray(features, dtype=np.float32)))

    def save(self, path: Path) -> None:
        if not self._samples:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        times = np.array(
            [np.nan if s.median_ms is None else s.median_ms for s in self._samples], dtype=float
        )
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            features=np.stack([s.features for s in self._samples]),
            workloads=np.array([s.workload_key for s in self._samples]),
            hashes=np.array([s.trace_hash for s in self._samples]),
            median_ms=times,
        )
        tmp.replace(path)

    def load(self, path: Path) -> None:
        path = Path(path)
        if not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as data:
                feats, wls = data["features"], data["workloads"]
                hashes, times = data["hashes"], data["median_ms"]
        except (OSError, KeyError, ValueError) as err:
            raise CostModelError(f"cannot read cost model {path}: {err}") from None
        self.update(
            [
                Sample(f, str(w), str(h), None if np.isnan(t) else float(t))
                for f, w, h, t in zip(feats, wls, hashes, times, strict=True)
            ]
        )
