"""A content-addressed cache of compiled kernels, keyed by source, compiler and flags.

Identical sources compile once: the first builder takes a per-key file lock and compiles,
the others wait on the lock and then find the binary. Binaries are written to a temporary
name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def cache_key(source: str, compiler_id: str, flags: Sequence[str]) -> str:
    """sha256 over the source text, the compiler's identity (path and version) and its flags."""
    digest = hashlib.sha256()
    for part in (source, compiler_id, "\0".join(flags)):
        digest.update(part.encode())
        digest.update(b"\x00\x01")
    return digest.hexdigest()


class CompileCache:
    """Binaries stored as <root>/<key[:2]>/<key><suffix>."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, key: str, suffix: str) -> bytes | None:
        """The cached binary, or None."""
        try:
            return self.path(key, suffix).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, suffix: str, data: bytes) -> Path:
        """Store `data` atomically and return its path."""
        dest = self.path(key, suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return dest

    def ensure_file(self, key: str, suffix: str, data: bytes) -> Path:
        """A path holding `data`, writing it only when absent (runners load from files)."""
        dest = self.path(key, suffix)
        if dest.exists():
            return dest
        return self.put(key, suffix, data)

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock for `key` across processes of this node."""
        lock_path = self.root / key[:2] / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
