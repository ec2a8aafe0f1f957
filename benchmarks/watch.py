"""What a process uses during a phase of P5: its resident set and its CPU time.

Linux only: the peak resident set is reset through ``/proc/self/clear_refs``
and read from ``/proc/self/status``; the CPU time of a process and of
its children (a PostgreSQL server's backends) from ``/proc/PID/stat``.
"""

from __future__ import annotations

import contextlib
import os
import resource

__all__ = ["PhaseWatch", "peak", "reset_peak"]


def _status(field_name: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def reset_peak() -> int:
    """Reset this process's peak resident set to its current size; return that size."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status("VmRSS")


def peak() -> int:
    """This process's peak resident set since the last :func:`reset_peak`."""
    return _status("VmHWM")


def _cpu_of_tree(pid: int) -> float:
    """CPU seconds of process *pid*, of its children alive, and of those it waited for.

    For the PostgreSQL server: the postmaster's children are its backends.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        # After the command: state, ppid, ..., utime (14th field of the line), stime, cutime...
        own = int(entry.name) == pid
        if own or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
            if own:
                total += int(fields[13]) + int(fields[14])
    return total / tick


def _cpu_of_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PhaseWatch:
    """For one process: its resident set before each phase and its peak during it,
    and the CPU time the phase took (this process's, and the server's if any).

    Threads share it: the barrier that starts a phase calls it once (a
    reset), the barrier that ends it once more (a reading).  A client in a
    process of its own calls it itself.
    """

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.calls = 0
        self.before: list[int] = []
        self.peaks: list[int] = []
        self.cpu: list[float] = []
        self._cpu_at_start = 0.0

    def _cpu(self) -> float:
        server = _cpu_of_tree(self.server_pid) if self.server_pid is not None else 0.0
        return _cpu_of_self() + server

    def __call__(self) -> None:
        if self.calls % 2 == 0:
            self.before.append(reset_peak())
            self._cpu_at_start = self._cpu()
        else:
            self.cpu.append(self._cpu() - self._cpu_at_start)
            self.peaks.append(peak())
        self.calls += 1
