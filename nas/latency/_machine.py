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


# oneDNN's kernels can be capped below the CPU's ISA (ONEDNN_MAX_CPU_ISA, or its older name
# DNNL_MAX_CPU_ISA; e.g. AVX2 to emulate an AVX2-only CPU). OpenVINO's OPTIMIZATION_CAPABILITIES
# ignore the cap: under AVX2 on an AVX-512 BF16 CPU they still list BF16, and a bf16 hint then fails
# to compile ("object is not initialized"). Capabilities each capped ISA cannot run:
_CAPS_MISSING_UNDER_ISA_CAP = {
    **dict.fromkeys(("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"), ("BF16", "FP16")),
    "AVX512_CORE_BF16": ("FP16",),
}


def onednn_isa_cap() -> str | None:
    """The oneDNN ISA cap set in the environment (upper case), None when the CPU's full ISA is used."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.strip().upper() if cap and cap.strip().upper() != "ALL" else None


@functools.cache
def openvino_capabilities() -> tuple[str, ...]:
    """OpenVINO CPU plugin OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, FP16, INT8) less what an ISA cap
    in the environment takes away (`onednn_isa_cap`), () if unavailable."""
    try:
        from nas.latency._backends import ov_core

        caps = tuple(str(c) for c in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # no openvino, or no CPU plugin: the description says so by leaving it empty
        return ()
    missing = _CAPS_MISSING_UNDER_ISA_CAP.get(onednn_isa_cap() or "", ())
    return tuple(c for c in caps if c not in missing)


def _fingerprint(description: dict[str, Any]) -> str:
    keys = ("cpu", "isa", "openvino_capabilities", "onednn_isa_cap")  # the cap only where one is set
    text = json.dumps({k: description[k] for k in keys if k in description}, sort_keys=True)
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
    cap = onednn_isa_cap()
    if cap:  # other kernels, other latencies: another fingerprint
        description["onednn_isa_cap"] = cap
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
    cap = f"; oneDNN capped at {d['onednn_isa_cap']}" if d.get("onednn_isa_cap") else ""
    return (f"{d['cpu']} [{' '.join(d.get('isa') or []) or 'no AVX2'}{cap}; OpenVINO caps {caps}; "
            f"id {d['fingerprint']}]")


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
