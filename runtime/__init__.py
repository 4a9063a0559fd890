"""Compiled models: the compile path that takes the best schedules from the database, dispatch
on symbolic shapes, the memory plan, weights loading and prefill/decode execution.

    from tunefleet.runtime import compile_model, CompileOptions, load_model
    manifest = compile_model(CompileOptions(model="tiny", target=target, out_dir="out"))
    model = load_model("out", weights)          # checks the target fingerprint
    session = model.session(batch=1, max_len=64)  # memory planned once
    logits = session.prefill(prompt_ids)          # [batch, n, vocab]
    logits = session.decode(next_ids)             # [batch, vocab]
"""

from tunefleet.runtime.compile import CompileOptions, compile_model
from tunefleet.runtime.engine import CompiledModel, Session, load_model
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.runtime.manifest import Manifest
from tunefleet.runtime.weights import Weights, load_weights, random_weights

__all__ = [
    "CompileOptions",
    "CompiledModel",
    "Manifest",
    "RuntimeModelError",
    "Session",
    "Weights",
    "compile_model",
    "load_model",
    "load_weights",
    "random_weights",
]
