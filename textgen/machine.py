"""The machine textgen runs on: the CPU's model name, the SIMD flags that decide its
kernels' speed, the cores this process may use, and how long the process has run.

One reader of /proc/cpuinfo (``lscpu`` where that file lacks a field) for everything that
needs it: whether bf16 is native (``model/precision.py``), the line a training run ends
with and the machine its metadata.json records (a record is only comparable on the same
kind of CPU), and the first line every benchmark prints. Read once per process.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time

# the flags shown in a machine line: the ones oneDNN, OpenBLAS and XNNPACK pick kernels by
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _fields(lines: list[str], model_key: str, flag_keys: tuple[str, ...]) -> tuple[str, set[str]]:
    """(model name, flags) from ``key: value`` lines ("" and empty where absent)."""
    model, flags = "", set()
    for line in lines:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == model_key and not model:
            model = value.strip()
        elif key in flag_keys and not flags:
            flags = set(value.split())
    return model, flags


@functools.cache
def _proc() -> tuple[str, frozenset[str]]:
    """/proc/cpuinfo's model name and flags (Linux; ARM names them ``Features``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            model, flags = _fields(fh.read().splitlines(), "model name", ("flags", "Features"))
    except OSError:
        return "", frozenset()
    return model, frozenset(flags)


@functools.cache
def _lscpu() -> tuple[str, frozenset[str]]:
    """``lscpu``'s model name and flags: asked only for a field /proc/cpuinfo lacks."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "", frozenset()
    model, flags = _fields(out.splitlines(), "Model name", ("Flags",))
    return model, frozenset(flags)


def cpu_flags() -> frozenset[str]:
    """All of the CPU's flags (empty where the system does not say). A CPU whose cpuinfo
    has its flags but no model name (many ARM machines) never waits for ``lscpu`` here."""
    return _proc()[1] or _lscpu()[1]


def cpu_model() -> str:
    """The CPU's model name, e.g. ``Intel(R) Xeon(R) Processor``."""
    return _proc()[0] or _lscpu()[0] or platform.processor() or platform.machine()


def cores() -> int:
    """The cores this process may run on (its affinity: a container's share, not the
    host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def shown_flags() -> list[str]:
    """Which of :data:`SHOWN_FLAGS` this CPU has, in that order."""
    flags = cpu_flags()
    return [flag for flag in SHOWN_FLAGS if flag in flags]


def machine_line() -> str:
    """``Intel(R) Xeon(R) Processor [avx2 fma avx512f amx_bf16], 2 cores``."""
    return f"{cpu_model()} [{' '.join(shown_flags()) or 'no AVX2'}], {cores()} cores"


def machine_record() -> dict[str, object]:
    """What a run's metadata.json keeps of the machine it trained on."""
    return {"cpu": cpu_model(), "flags": shown_flags(), "cores": cores()}


_IMPORTED = time.monotonic()


def process_seconds() -> float:
    """Wall seconds since this process started (from /proc on Linux; elsewhere since this
    module was imported, which ``textgen train`` does when its command starts)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            fields = fh.read().rpartition(")")[2].split()
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
        # field 22 of stat (starttime, in clock ticks since boot) is index 19 after the name
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        if age <= 0:  # the two clocks disagree (seen in some sandboxes): not an age
            raise ValueError(age)
        return age
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED
