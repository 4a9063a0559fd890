"""Targets: stable fingerprints, kind predicates and the capabilities spaces read."""

from __future__ import annotations

import pytest

from tunefleet.workers.targets import Target, TargetError, TargetKind, detect_cpu


def test_fingerprints_are_unchanged_by_the_kind_enum() -> None:
    # literal values computed before kinds became an enum: stored records keep their target
    assert Target("cpu", "x", "y", (("cores", 2),)).fingerprint == "cb7e575a1a340e4e"
    h100 = Target("cuda", "H", "sm_90", (("compute_capability", "9.0"), ("sm_count", None)))
    assert h100.fingerprint == "2807136576fd4a7e"
    assert h100.kind is TargetKind.CUDA and h100.to_info()["kind"] == "cuda"


def test_kind_predicates_and_unknown_kinds() -> None:
    assert Target.cpu().is_cpu and not Target.cpu().is_gpu
    assert Target.cuda("sm_90").is_gpu and not Target.cuda("sm_90").is_cpu
    assert TargetKind.CPU.source_lang == "c" and TargetKind.CUDA.source_lang == "cuda"
    with pytest.raises(TargetError, match="unknown target kind 'rocm'"):
        Target("rocm", "MI300", "gfx942")


def test_gpu_capabilities_come_from_details_else_the_architecture() -> None:
    h100 = Target.cuda("sm_90")
    assert h100.shared_memory_bytes == 227 * 1024
    assert h100.sm_count == 132 and h100.cores == 132
    assert h100.registers_per_block == 65536 and h100.max_threads_per_block == 1024
    assert Target.cuda("sm_90a").shared_memory_bytes == 227 * 1024
    assert Target.cuda("sm_80").shared_memory_bytes == 163 * 1024
    assert Target.cuda("sm_89").shared_memory_bytes == 99 * 1024
    assert Target.cuda("sm_89").sm_count is None
    pcie = Target.cuda("sm_90", device="H100 PCIe", sm_count=114)
    assert pcie.sm_count == 114 and pcie.fingerprint != h100.fingerprint
    assert h100.vector_bytes == 0


def test_cpu_capabilities_come_from_details_or_the_isa() -> None:
    made = Target.cpu(cores=8, vector_bytes=32)
    assert made.cores == 8 and made.vector_bytes == 32 and made.shared_memory_bytes == 0
    avx2 = Target("cpu", "m", "x86_64-avx2", (("cores", 4), ("isa", ("avx", "avx2"))))
    assert avx2.vector_bytes == 32 and avx2.cores == 4
    assert Target("cpu", "m", "aarch64", (("isa", ("asimd",)),)).vector_bytes == 16
    host = detect_cpu()
    assert host.cores >= 1 and host.vector_bytes in (16, 32, 64)
    assert host.sm_count is None


def test_a_target_rebuilt_from_its_info_keeps_its_fingerprint() -> None:
    import json

    host = detect_cpu()
    info = json.loads(json.dumps(host.to_info()))  # as `tunefleet targets --json` prints it
    assert Target.from_info(info) == host and Target.from_info(info).fingerprint == host.fingerprint
    with pytest.raises(TargetError, match="does not match"):
        Target.from_info({**info, "device": "another CPU"})
