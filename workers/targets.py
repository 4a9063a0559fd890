"""Targets: the device kinds, the capabilities spaces read, detection and fingerprints.

A fingerprint hashes only identifying fields (model, ISA, core count, compute capability,
memory size, driver and compiler versions), never free memory or clocks, so it is stable
across runs on one machine and a record always names the exact target it was measured on.
A `Target` also answers the capability questions design spaces and postprocessors ask
(cores, vector width, shared memory, registers, SMs), from its details or, where detection
did not say, from known defaults of its architecture; `Target.cpu` and `Target.cuda` build
one without detection (tests, tuning for a device this machine does not have).
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
from enum import StrEnum
from pathlib import Path
from typing import Any

# ISA extensions that change what a compiler may emit; the rest of /proc/cpuinfo is noise.
_ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi", "amx_tile",
    "amx_bf16", "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm",
)  # fmt: skip


# Per-architecture facts used where detection does not report them. Shared memory is the
# per-block limit with the dynamic opt-in the runner sets (sharedMemPerBlockOptin): 227 KiB on
# sm_90, 163 KiB on sm_80/87, 99 KiB on sm_86/89 and unknown architectures. SM counts are the
# data-centre parts (H100 SXM, A100).
SHARED_OPTIN_BYTES = {"sm_90": 227 * 1024, "sm_80": 163 * 1024, "sm_87": 163 * 1024}
DEFAULT_SHARED_OPTIN_BYTES = 99 * 1024
SM_COUNTS = {"sm_90": 132, "sm_80": 108}
REGISTERS_PER_BLOCK = 64 * 1024
MAX_THREADS_PER_BLOCK = 1024

# widest SIMD register by ISA flag, widest first
_VECTOR_BYTES = (("avx512f", 64), ("avx2", 32), ("avx", 32), ("sve", 16), ("asimd", 16))


class TargetError(RuntimeError):
    """A requested target is not present on this machine."""


class TargetKind(StrEnum):
    """The kinds of device a target can be; behaviour is decided by its predicates."""

    CPU = "cpu"
    CUDA = "cuda"

    @property
    def is_cpu(self) -> bool:
        return self is TargetKind.CPU

    @property
    def is_gpu(self) -> bool:
        return self is TargetKind.CUDA

    @property
    def source_lang(self) -> str:
        """The language of the kernels built for this kind ("c" or "cuda")."""
        return "c" if self.is_cpu else "cuda"


@dataclass(frozen=True)
class Target:
    """A device kind plus the identifying facts of one device, storable as a TargetInfo row."""

    kind: TargetKind
    device: str
    arch: str  # e.g. "x86_64-avx512" or "sm_90"
    details: tuple[tuple[str, Any], ...] = ()
    index: int = 0  # device ordinal on this node; not part of the identity

    def __post_init__(self) -> None:
        try:
            kind = TargetKind(self.kind)
        except ValueError:
            known = ", ".join(k.value for k in TargetKind)
            raise TargetError(f"unknown target kind {self.kind!r}; use one of {known}") from None
        object.__setattr__(self, "kind", kind)

    @staticmethod
    def cpu(
        cores: int = 2,
        vector_bytes: int = 64,
        arch: str = "x86_64-avx512",
        device: str = "cpu",
        **details: Any,
    ) -> Target:
        """A CPU target with the given capabilities, without detecting anything."""
        facts = {"cores": cores, "vector_bytes": vector_bytes, **details}
        return Target(TargetKind.CPU, device, arch, tuple(sorted(facts.items())))

    @staticmethod
    def cuda(arch: str = "sm_80", device: str = "", **details: Any) -> Target:
        """A CUDA target of an architecture ("sm_90"), without detecting anything; capabilities
        not given in `details` take the architecture's known defaults."""
        digits = arch.removeprefix("sm_").removesuffix("a")
        facts = {"compute_capability": f"{digits[:-1]}.{digits[-1:]}", **details}
        return Target(TargetKind.CUDA, device or arch, arch, tuple(sorted(facts.items())))

    @property
    def detail_values(self) -> dict[str, Any]:
        return dict(self.details)

    @property
    def is_cpu(self) -> bool:
        return self.kind.is_cpu

    @property
    def is_gpu(self) -> bool:
        return self.kind.is_gpu

    def _detail(self, name: str) -> Any:
        return self.detail_values.get(name)

    @property
    def sm_count(self) -> int | None:
        """Streaming multiprocessors of a GPU (detected, else the architecture's); None on a
        CPU or an unknown architecture."""
        if not self.is_gpu:
            return None
        return self._detail("sm_count") or SM_COUNTS.get(self._base_arch)

    @property
    def cores(self) -> int:
        """Parallel units: CPU cores, or a GPU's SMs (1 when unknown)."""
        if self.is_gpu:
            return self.sm_count or 1
        return int(self._detail("cores") or 1)

    @property
    def vector_bytes(self) -> int:
        """Width of the widest SIMD register of a CPU (from its ISA or arch; 16 when unknown);
        0 on a GPU."""
        if self.is_gpu:
            return 0
        given = self._detail("vector_bytes")
        if given:
            return int(given)
        flags = set(self._detail("isa") or ()) | set(self.arch.replace("-", " ").split())
        flags |= {"avx512f"} if "avx512" in flags else set()
        return next((width for flag, width in _VECTOR_BYTES if flag in flags), 16)

    @property
    def shared_memory_bytes(self) -> int:
        """Shared memory one GPU block may use (with the opt-in); 0 on a CPU."""
        if not self.is_gpu:
            return 0
        given = self._detail("shared_memory_bytes")
        return (
            int(given)
            if given
            else SHARED_OPTIN_BYTES.get(self._base_arch, DEFAULT_SHARED_OPTIN_BYTES)
        )

    @property
    def registers_per_block(self) -> int:
        """32-bit registers one GPU block may use; 0 on a CPU."""
        if not self.is_gpu:
            return 0
        return int(self._detail("registers_per_block") or REGISTERS_PER_BLOCK)

    @property
    def max_threads_per_block(self) -> int:
        """Threads one GPU block may have; 0 on a CPU."""
        if not self.is_gpu:
            return 0
        return int(self._detail("max_threads_per_block") or MAX_THREADS_PER_BLOCK)

    @property
    def _base_arch(self) -> str:
        """The architecture without the arch-specific suffix ("sm_90a" -> "sm_90")."""
        return self.arch.removesuffix("a")

    @property
    def fingerprint(self) -> str:
        """A short stable hash of kind, device, arch and identifying details."""
        payload = json.dumps(
            {"kind": self.kind, "device": self.device, "arch": self.arch, "details": self.details},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @staticmethod
    def from_info(info: dict[str, Any]) -> Target:
        """The target a `to_info()` dict (e.g. `tunefleet targets --json` of another node)
        describes, with the same fingerprint."""
        details = tuple(
            (key, tuple(value) if isinstance(value, list) else value)
            for key, value in info.get("details", {}).items()
        )
        target = Target(info["kind"], info["device"], info["arch"], details)
        if "fingerprint" in info and info["fingerprint"] != target.fingerprint:
            raise TargetError(f"target info does not match its fingerprint {info['fingerprint']}")
        return target

    def to_info(self) -> dict[str, Any]:
        """The dict the database stores as TargetInfo: kind, fingerprint, device, arch, details."""
        return {
            "kind": self.kind.value,
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
    return Target(kind=TargetKind.CPU, device=model, arch=arch, details=details)


def cuda_device_target(cuda: Any, index: int) -> Target:
    """The target of CUDA device `index` through an initialised pycuda driver module."""
    driver = cuda.get_driver_version()
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
    return Target(TargetKind.CUDA, dev.name(), f"sm_{major}{minor}", details, index)


def _detect_cuda_pycuda() -> list[Target] | None:
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    try:
        cuda.init()
        return [cuda_device_target(cuda, index) for index in range(cuda.Device.count())]
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
        found.append(Target(TargetKind.CUDA, name, "sm_" + cap.replace(".", ""), details, index))
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
    try:
        found = TargetKind(kind)
    except ValueError:
        raise TargetError(f"unknown target kind {kind!r}; use 'cpu' or 'cuda'") from None
    if found.is_cpu:
        return detect_cpu(compiler)
    gpus = detect_cuda()
    if not gpus:
        raise TargetError("no CUDA device found (need an NVIDIA GPU with its driver)")
    return gpus[0]
