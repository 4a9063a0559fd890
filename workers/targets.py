"""Detect the CPU and CUDA targets of this machine and fingerprint them.

A fingerprint hashes only identifying fields (model, ISA, core count, compute capability,
memory size, driver and compiler versions), never free memory or clocks, so it is stable
across runs on one machine and a record always names the exact target it was measured on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ISA extensions that change what a compiler may emit; the rest of /proc/cpuinfo is noise.
_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi", "amx_tile",
    "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip


class TargetError(RuntimeError):
    """A requested target is not present on this machine."""


@dataclass(frozen=True)
class Target:
    """A device kind plus the identifying facts of one device, storable as a TargetInfo row."""

    kind: str  # "cpu" | "cuda"
    device: str
    arch: str  # e.g. "x86_64-avx512" or "sm_90"
    details: tuple[tuple[str, Any], ...] = ()
    index: int = 0  # device ordinal on this node; not part of the identity

    @property
    def detail_values(self) -> dict[str, Any]:
        return dict(self.details)

    @property
    def fingerprint(self) -> str:
        """A short stable hash of kind, device, arch and identifying details."""
        payload = json.dumps(
            {"kind": self.kind, "device": self.device, "arch": self.arch, "details": self.details},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_info(self) -> dict[str, Any]:
        """The dict the database stores as TargetInfo: kind, fingerprint, device, arch, details."""
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "device": self.device,
            "arch": self.arch,
            "details": self.detail_values,
        }


def _run_text(cmd: list[str], timeout: float = 20.0) -> str:
    """stdout of a short command, or '' when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


@functools.lru_cache(maxsize=8)
def compiler_version(compiler: str) -> str:
    """The first line of `compiler --version` (e.g. 'gcc (Debian 12.2.0-14) 12.2.0'), or ''."""
    out = _run_text([compiler, "--version"])
    return out.splitlines()[0].strip() if out else ""


@functools.lru_cache(maxsize=4)
def nvcc_version(nvcc: str = "nvcc") -> str:
    """nvcc's release as 'X.Y.Z' (from 'V13.0.88'), or '' without nvcc."""
    match = re.search(r"V(\d+\.\d+\.\d+)", _run_text([nvcc, "--version"]))
    return match.group(1) if match else ""


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_cache_bytes() -> int:
    """Size of the largest (last-level) CPU cache in bytes; 32 MiB when unknown."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if match:
            scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)]
            best = max(best, int(match.group(1)) * scale)
    return best or 32 << 20


def detect_cpu(compiler: str = "gcc") -> Target:
    """The host CPU as a target: model, ISA flags, cores, last-level cache, compiler version."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = tuple(f for f in _ISA_FLAGS if f in flags)
    machine = platform.machine()
    level = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else ""
    arch = f"{machine}-{level}" if level else machine
    model = info.get("model name") or info.get("Hardware") or platform.processor() or machine
    details = (
        ("cores", os.cpu_count() or 1),
        ("isa", isa),
        ("llc_bytes", cpu_cache_bytes()),
        ("compiler", compiler_version(compiler)),
    )
    return Target(kind="cpu", device=model, arch=arch, details=details)


def _detect_cuda_pycuda() -> list[Target] | None:
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    try:
        cuda.init()
        driver = cuda.get_driver_version()
        found = []
        for index in range(cuda.Device.count()):
            dev = cuda.Device(index)
            major, minor = dev.compute_capability()
            attr = cuda.device_attribute
            details = (
                ("compute_capability", f"{major}.{minor}"),
                ("sm_count", dev.get_attribute(attr.MULTIPROCESSOR_COUNT)),
                ("memory_bytes", dev.total_memory()),
                ("l2_bytes", dev.get_attribute(attr.L2_CACHE_SIZE)),
                ("driver", f"{driver // 1000}.{(driver % 1000) // 10}"),
                ("nvcc", nvcc_version()),
            )
            found.append(Target("cuda", dev.name(), f"sm_{major}{minor}", details, index))
        return found
    except cuda.Error:
        return []


def _detect_cuda_smi() -> list[Target]:
    query = "name,compute_cap,memory.total,driver_version"
    out = _run_text(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"])
    found = []
    for index, line in enumerate(out.strip().splitlines()):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        name, cap, mem_mib, driver = parts
        details = (
            ("compute_capability", cap),
            ("sm_count", None),
            ("memory_bytes", int(float(mem_mib)) << 20),
            ("l2_bytes", None),
            ("driver", driver),
            ("nvcc", nvcc_version()),
        )
        found.append(Target("cuda", name, "sm_" + cap.replace(".", ""), details, index))
    return found


def detect_cuda() -> list[Target]:
    """CUDA devices through pycuda when installed, else nvidia-smi; empty without a GPU."""
    found = _detect_cuda_pycuda()
    return found if found is not None else _detect_cuda_smi()


def detect_targets(compiler: str = "gcc") -> list[Target]:
    """Every target of this machine: the CPU first, then each CUDA device."""
    return [detect_cpu(compiler), *detect_cuda()]


def resolve_target(kind: str, compiler: str = "gcc") -> Target:
    """The first target of `kind` ('cpu' or 'cuda') on this machine, or TargetError."""
    if kind == "cpu":
        return detect_cpu(compiler)
    if kind == "cuda":
        gpus = detect_cuda()
        if not gpus:
            raise TargetError("no CUDA device found (need an NVIDIA GPU with its driver)")
        return gpus[0]
    raise TargetError(f"unknown target kind {kind!r}; use 'cpu' or 'cuda'")
