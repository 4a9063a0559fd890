"""Cost models rank candidates before measurement: `update` with measured samples, `predict`.

Scores are normalised throughput within a workload (best time / time: 1.0 is the best seen,
failures 0), so samples of many workloads on one target train one model. Models are chosen
by name (`create_cost_model("xgb")`) or passed as instances, and saved and reloaded per
target (one file per target fingerprint under a directory).
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .registry import load_entry


class CostModelError(ValueError):
    """Unknown model name or an unreadable saved model."""


@dataclass(frozen=True)
class Sample:
    """One measured candidate: its features, workload, trace hash and time (None: failed)."""

    features: np.ndarray
    workload_key: str
    trace_hash: str
    median_ms: float | None


class CostModel(ABC):
    """Predicts a score per candidate (higher is faster)."""

    name = "abstract"

    @abstractmethod
    def update(self, samples: Sequence[Sample]) -> None:
        """Add measured samples (duplicates by workload and trace hash are ignored)."""

    @abstractmethod
    def predict(self, features: np.ndarray) -> np.ndarray:
        """One score per row of `features` (rows are feature vectors)."""

    def save(self, path: Path) -> None:  # noqa: B027 - a model without state saves nothing
        """Write the model (and what it was trained on) to `path`."""

    def load(self, path: Path) -> None:  # noqa: B027
        """Read a model written by `save`; a missing file leaves the model untrained."""

    @property
    def trained(self) -> bool:
        return False


class RandomModel(CostModel):
    """Uniform random scores: the model used until there is enough data."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def update(self, samples: Sequence[Sample]) -> None:
        return None

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.array([self._rng.random() for _ in range(len(features))], dtype=np.float64)


def normalised_throughput(samples: Sequence[Sample]) -> np.ndarray:
    """best_ms / median_ms within each workload; 0 for failed samples."""
    best: dict[str, float] = {}
    for s in samples:
        if s.median_ms is not None and s.median_ms > 0:
            best[s.workload_key] = min(best.get(s.workload_key, s.median_ms), s.median_ms)
    out = np.zeros(len(samples), dtype=np.float64)
    for i, s in enumerate(samples):
        if s.median_ms is not None and s.median_ms > 0:
            out[i] = best[s.workload_key] / s.median_ms
    return out


def model_path(directory: Path, target_fingerprint: str) -> Path:
    """Where the model of one target lives under `directory`."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", target_fingerprint)[:120]
    return Path(directory) / f"{safe}.npz"


_REGISTRY: dict[str, str] = {
    "random": "tunefleet.tuner.cost_model:RandomModel",
    "xgb": "tunefleet.tuner.model_xgb:XGBModel",
}


def create_cost_model(name: str, seed: int = 0) -> CostModel:
    """A cost model by name ("xgb" or "random")."""
    cls = load_entry(_REGISTRY, name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise CostModelError(f"unknown cost model {name!r}; known: {known}")
    return cls(seed=seed)
