"""Lazy registries: names mapped to "module:attribute" strings, imported on first use.

Rules, postprocessors, mutators, strategies, cost models and task schedulers are each looked
up by name this way, so naming one does not import the others (or XGBoost).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def load_entry(registry: Mapping[str, str], name: str) -> Any | None:
    """The object `registry[name]` names, imported now; None when `name` is not registered."""
    entry = registry.get(name)
    if entry is None:
        return None
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)
