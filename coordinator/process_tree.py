"""End every process this one started: pool workers, runner workers and their compilers.

Build workers share our process group; compilers and runner workers run in sessions of their
own (so a timeout can kill a whole compiler tree), which means a signal to our group never
reaches them. `end_children` finds them all under /proc, freezes our own workers so they
start nothing new, then kills each foreign process group whole and each worker by pid. The
multiprocessing resource tracker is spared: it exits by itself once we do, after unlinking
the semaphores the pools left behind.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

_TRACKER_MARK = "from multiprocessing.resource_tracker import main"  # its -c program


@dataclass(frozen=True)
class ProcessInfo:
    """What /proc says about one process."""

    pid: int
    ppid: int
    pgid: int
    cmdline: str


def read_process(pid: int) -> ProcessInfo | None:
    """One process's parent, group and command line; None if it is gone or unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # the command name is in parentheses and may itself hold spaces or parentheses
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 3 or fields[0] == "Z":
        return None  # a zombie holds nothing; its parent reaps it
    cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return ProcessInfo(pid, int(fields[1]), int(fields[2]), cmdline)


def descendants(root: int) -> list[ProcessInfo]:
    """Every living process below `root` (children, grandchildren...), parents first."""
    table: dict[int, list[ProcessInfo]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = read_process(int(entry.name))
            if info is not None:
                table.setdefault(info.ppid, []).append(info)
    found: list[ProcessInfo] = []
    frontier = [root]
    while frontier:
        children = table.get(frontier.pop(), [])
        found.extend(children)
        frontier.extend(c.pid for c in children)
    return found


def end_children(root: int | None = None) -> int:
    """Kill every descendant of `root` (default: this process) but the resource tracker.

    Returns how many processes or groups were signalled. Linux only: elsewhere it does
    nothing and returns 0.
    """
    if not Path("/proc/self/stat").exists():
        return 0
    root = os.getpid() if root is None else root
    own_group = os.getpgid(root)
    ours = [p for p in descendants(root) if _TRACKER_MARK not in p.cmdline]
    # freeze our own group's workers first so none starts a compiler while we look
    same_group = [p.pid for p in ours if p.pgid == own_group]
    for pid in same_group:
        _signal(pid, signal.SIGSTOP)
    ours = [p for p in descendants(root) if _TRACKER_MARK not in p.cmdline]
    groups = {p.pgid for p in ours if p.pgid != own_group}
    signalled = 0
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
            signalled += 1
        except OSError:
            pass
    for info in ours:
        if info.pgid == own_group and _signal(info.pid, signal.SIGKILL):
            signalled += 1
    return signalled


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
    except OSError:
        return False
    return True
