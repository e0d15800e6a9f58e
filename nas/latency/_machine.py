"""What machine a latency was measured on: CPU model, the ISA features that change results, and
what OpenVINO's CPU plugin says it can optimize for.

Two machines can share a CPU model string and still differ (a VM may hide AMX), and the same IR runs
in a different precision by default on a CPU with AVX-512 BF16 / AMX than on an AVX2-only one. So a
latency record carries a short fingerprint of this description, the cache keys on it, and a search
refuses to mix latencies from machines whose fingerprints differ.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

# ISA features that change speed or numerics of inference here (oneDNN/OpenVINO pick kernels by them):
# AVX2 vs AVX-512 width, VNNI for INT8 dot products, BF16/FP16 arithmetic, AMX tiles.
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


@functools.cache
def cpu_name() -> str:
    """CPU model string (e.g. 'AMD EPYC 7B13'), else what platform knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """The ISA_FEATURES this CPU reports, in ISA_FEATURES order."""
    flags = set((_cpuinfo().get("flags") or "").split())
    return tuple(f for f in ISA_FEATURES if f in flags)


@functools.cache
def openvino_capabilities() -> tuple[str, ...]:
    """OpenVINO CPU plugin OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, FP16, INT8), () if unavailable."""
    try:
        from nas.latency._backends import ov_core

        return tuple(str(c) for c in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # no openvino, or no CPU plugin: the description says so by leaving it empty
        return ()


def _fingerprint(description: dict[str, Any]) -> str:
    text = json.dumps({k: description[k] for k in ("cpu", "isa", "openvino_capabilities")}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@functools.cache
def _describe() -> str:
    description: dict[str, Any] = {
        "cpu": cpu_name(),
        "isa": list(cpu_features()),
        "openvino_capabilities": list(openvino_capabilities()),
        "logical_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
    }
    description["fingerprint"] = _fingerprint(description)
    return json.dumps(description)


def describe_machine() -> dict[str, Any]:
    """The machine description recorded with runs and benchmark results (a fresh dict each call)."""
    return json.loads(_describe())


def machine_id() -> str:
    """Short fingerprint of cpu, ISA features and OpenVINO capabilities: equal ids, comparable latencies."""
    return describe_machine()["fingerprint"]


def machine_line(description: dict[str, Any] | None = None) -> str:
    """One human-readable line, e.g. 'Intel Xeon (avx2 avx512f ... amx_int8; OpenVINO: FP32 BF16 INT8)'."""
    d = description or describe_machine()
    caps = " ".join(d.get("openvino_capabilities") or []) or "n/a"
    return f"{d['cpu']} [{' '.join(d.get('isa') or []) or 'no AVX2'}; OpenVINO caps {caps}; id {d['fingerprint']}]"


DEVICE_ENV = "VITNAS_DEVICE_FINGERPRINT"  # test/ops hook: declare this worker another latency device
_DEVICE_KEYS = ("fingerprint", "logical_cpus", "backend", "device", "runtime_version", "threads", "precision")


def describe_device(backend: str, threads: int, precision: str) -> dict[str, Any]:
    """The latency device a search pins: the machine description plus what else changes a latency
    (cores, runtime and its version, backend, threads, precision), with a `device_fingerprint` of all.

    $VITNAS_DEVICE_FINGERPRINT replaces the computed fingerprint (to simulate another device in tests,
    or to tell apart hosts whose descriptions agree but whose latencies must not mix)."""
    from nas.latency._backends import device_name, runtime_version

    description = describe_machine()
    description.update(backend=backend, device=device_name(backend), runtime_version=runtime_version(backend),
                       threads=threads, precision=precision)
    text = json.dumps({k: description[k] for k in _DEVICE_KEYS}, sort_keys=True)
    description["device_fingerprint"] = os.environ.get(DEVICE_ENV) or hashlib.sha1(text.encode()).hexdigest()[:10]
    return description


def device_line(description: dict[str, Any]) -> str:
    """machine_line plus the runtime, threads of cores, precision and the device fingerprint."""
    d = description
    return (f"{machine_line(d)}, {d['backend']} {d['runtime_version']}, {d['threads']} of {d['logical_cpus']} "
            f"threads, {d['precision']} (device {d['device_fingerprint']})")
