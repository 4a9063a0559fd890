"""Our runtime against Hugging Face `transformers` on the same config and weights.

    python bench/check_transformers.py [--families llama,qwen2] [--steps 32] [--prompt-len 8]
                                       [--target cpu|cuda] [--dtype float32|float16]
                                       [--db URL] [--out DIR]

needs `transformers` and `torch` (not dependencies of tunefleet: pip install them beside it).
For each family a small config is written as a Hugging Face `config.json`, random weights as
`model.safetensors`; transformers loads the folder (from_pretrained in --dtype, eager
attention, on the GPU with --target cuda; nothing fetched) and our runtime compiles the same
config for the target (best records of --db where given, default schedules otherwise) and
loads the same file. Both prefill the same prompt and decode greedily; the table gives the
largest relative logit error over all steps and whether the greedy tokens agree at every
step. Exits 1 when a family exceeds the dtype's tolerance (1e-3 in float32, 1e-2 in float16)
or its tokens differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

CONFIGS = {
    "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "num_key_value_heads": 2, "rope_theta": 500000.0},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
              "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
}  # fmt: skip
BASE = {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 512, "max_position_embeddings": 512,
        "torch_dtype": "float32", "hidden_act": "silu"}  # fmt: skip
TOLERANCE = {"float32": 1e-3, "float16": 1e-2}


def run_family(family: str, steps: int, prompt_len: int, db: str | None, work: Path,
               target_kind: str = "cpu", dtype: str = "float32") -> dict:  # fmt: skip
    import torch
    import transformers

    from tunefleet.coordinator.models import parse_hf_config
    from tunefleet.database import RecordStore
    from tunefleet.runtime import CompileOptions, compile_model, load_model, load_weights
    from tunefleet.runtime.weights import random_weights, save_checkpoint
    from tunefleet.workers.builder import BuildConfig
    from tunefleet.workers.targets import resolve_target

    data = {**BASE, **CONFIGS[family], "torch_dtype": dtype}
    device = "cuda" if target_kind == "cuda" else "cpu"
    folder = work / family
    cfg = parse_hf_config(data, f"{family}/config.json", name=f"check-{family}")
    save_checkpoint(random_weights(cfg, seed=11), folder)
    (folder / "config.json").write_text(json.dumps(data))

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), torch_dtype=getattr(torch, dtype), attn_implementation="eager"
    ).to(device).eval()
    store = RecordStore.open(db) if db else None
    compiled = work / f"{family}.tf"
    build = BuildConfig(cache_dir=str(work / "kernels"))
    try:
        target = resolve_target(target_kind)
        compile_model(CompileOptions(cfg, target, str(compiled), build, store, jobs=8))
    finally:
        if store is not None:
            store.close()
    ours = load_model(compiled, load_weights(cfg, folder)).session(1, prompt_len + steps,
                                                                    prompt_len)  # fmt: skip

    prompt = np.random.default_rng(5).integers(0, cfg.vocab_size, (1, prompt_len))
    worst, same = 0.0, True
    def logits(out: object) -> np.ndarray:
        return out.logits[0].double().cpu().numpy()

    with torch.no_grad():
        out = hf(torch.from_numpy(prompt).to(device), use_cache=True)
        past, theirs = out.past_key_values, logits(out)
        mine = ours.host(ours.prefill(prompt))[0].astype(np.float64)
        for step in range(steps + 1):
            worst = max(worst, float(np.abs(mine - theirs).max() / np.abs(theirs).max()))
            t_hf, t_ours = int(theirs[-1].argmax()), int(mine[-1].argmax())
            if t_hf != t_ours:
                same = False
                break
            if step == steps:
                break
            out = hf(torch.tensor([[t_hf]], device=device), past_key_values=past, use_cache=True)
            past, theirs = out.past_key_values, logits(out)
            mine = ours.host(ours.decode(np.array([t_ours])))[None, 0].astype(np.float64)
    return {"family": family, "steps": steps, "max_rel_err": worst, "tokens_match": same,
            "target": target_kind, "dtype": dtype, "device": target.device,
            "transformers": transformers.__version__, "torch": torch.__version__}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="llama,qwen2")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--db", help="record store URL whose best records to compile with")
    parser.add_argument("--out", help="folder for the models and results (default: temporary)")
    parser.add_argument("--target", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(TOLERANCE), default="float32")
    args = parser.parse_args()
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        print(f"check_transformers: needs torch and transformers ({err.name} is missing)")
        return 1
    work = Path(args.out or tempfile.mkdtemp(prefix="tunefleet-hf-check-"))
    rows = [run_family(f, args.steps, args.prompt_len, args.db, work, args.target, args.dtype)
            for f in args.families.split(",")]  # fmt: skip
    print(f"{rows[0]['device']}, {args.dtype}, transformers {rows[0]['transformers']}, "
          f"torch {rows[0]['torch']}")  # fmt: skip
    print(f"{'family':8} {'steps':>5} {'max_rel_err':>12} tokens")
    for r in rows:
        same = "same" if r["tokens_match"] else "DIFFER"
        print(f"{r['family']:8} {r['steps']:>5} {r['max_rel_err']:>12.3g} {same}")
    (work / "check_transformers.json").write_text(json.dumps(rows, indent=2))
    bad = [r for r in rows if r["max_rel_err"] > TOLERANCE[args.dtype] or not r["tokens_match"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
