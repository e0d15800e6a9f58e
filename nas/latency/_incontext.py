"""Units timed in context: a whole network's OpenVINO per-node profile, attributed to its units.

A unit timed alone runs differently from inside a network (other layouts, reorders, kernels: an
isolated CAS-ViT block ran 2x slower than its share of a network), so the predictor learns from
whole networks. One is compiled with PERF_COUNT=YES; every executed node of the compiled graph
carries the original layer names it fused (`originalLayersNames`), and those of torch modules
name their path (`__module.stages.2.1.0.mixer.qkv/...`): `stem`, `stages.<i>.0` (stage i's
downsampling), `stages.<i>.1` (stage i's body), `head`. A node with no path among its names (a
reorder, a convolution fused with its batch norm) belongs to the unit of the node executed before
it. The per-node times (median over several inferences) of each unit sum to its in-context time.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from nas.arch import Arch
from nas.latency import _backends as backends
from nas.latency._pace import wait_for_pace
from nas.latency._precision import DEFAULT_PRECISION
from nas.latency._timing import MeasureSettings, cpu_clock, others_cores, wait_for_quiet

# Inferences whose per-node times are read; each node's fastest is kept: a node that another process
# preempted once reads slow in that run only, so the minima sum to a quiet run (the whole-network
# correction maps them to the measured latency).
PROFILE_RUNS = 20
WARMUP_RUNS = 5
_PATH = re.compile(r"__module\.(stem|head|stages\.(\d+)\.([01]))\b")


def unit_label(names: str) -> str | None:
    """'stem', 'head', 'down<i>' or 'body<i>' from a node's original layer names, None when no path."""
    for match in _PATH.finditer(names):
        if match.group(1) in ("stem", "head"):
            return match.group(1)
        return ("down" if match.group(3) == "0" else "body") + match.group(2)
    return None


def convert(arch: Arch, resolution: int, precision: str = DEFAULT_PRECISION) -> Any:
    """The openvino.Model the latency of `arch` is measured on (NNCF-quantized for int8 with the
    rules of its mixers, as nas.latency.measure quantizes it)."""
    import torch

    from nas.export import convert_openvino
    from nas.machine_lock import training
    from nas.models import build_model

    torch.manual_seed(0)
    with training():  # CPU-heavy, not timing: like a training epoch, no one times meanwhile
        ov_model = convert_openvino(build_model(arch), resolution)
        if precision == "int8":
            from nas.quantization import quantize_openvino

            with backends.nncf_progress_hidden():
                ov_model = quantize_openvino(ov_model, backends._synthetic_calibration(resolution),
                                             mixers=[stage.mixer for stage in arch.stages])
    return ov_model


def timing_step(ov_model: Any, threads: int, precision: str) -> Any:
    """The step nas.latency.measure times for `ov_model` (compiled now, outside any timing)."""
    from nas.export import example_input
    from nas.machine_lock import training

    resolution = ov_model.inputs[0].get_partial_shape()[2].get_length()
    with training():  # compiling loads the cores: no one times meanwhile
        return backends._ov_step(ov_model, threads, example_input(resolution).numpy(), precision)


class Profiled:
    """A network compiled once with PERF_COUNT=YES, its executed nodes labelled by unit; `run` profiles
    it (as often as wanted: a calibration profiles each network in several rounds)."""

    def __init__(self, ov_model: Any, threads: int, precision: str) -> None:
        import openvino as ov

        from nas.export import example_input

        config = {**backends.openvino_config(threads, precision), "PERF_COUNT": True}
        compiled = backends.ov_core().compile_model(ov_model, "CPU", config)
        self.labels: dict[str, str | None] = {}
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            names = info["originalLayersNames"].astype(str) if "originalLayersNames" in info else ""
            self.labels[op.get_friendly_name()] = unit_label(names)
        self.threads = threads
        self.compiled = compiled  # the request needs it alive
        self.request = compiled.create_infer_request()
        resolution = ov_model.inputs[0].get_partial_shape()[2].get_length()
        self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(example_input(resolution).numpy())))

    def run(self, settings: MeasureSettings, runs: int = PROFILE_RUNS) -> tuple[dict[str, float], float | None]:
        """(milliseconds per unit label (see `unit_label`; the input's reorder counts to the stem) of one
        inference, each node's time the fastest of `runs` profiled inferences; cores other processes
        used meanwhile). Waits for a quiet CPU first, like a timing (`settings`)."""
        from nas.machine_lock import measuring

        request = self.request
        times: dict[str, list[float]] = {}
        order: list[str] = []
        limit = settings.others_limit(self.threads)
        with measuring():
            if limit is not None:
                wait_for_quiet(limit, settings.max_wait_seconds, settings.quiet_window_seconds)
            if settings.pace_factor > 0:
                wait_for_pace(self.threads, settings.pace_factor, settings.max_pace_wait_seconds)
            for _ in range(WARMUP_RUNS):
                request.infer()
            before = cpu_clock()
            for _ in range(runs):
                request.infer()
                for node in request.get_profiling_info():
                    if node.node_name not in times:
                        times[node.node_name] = []
                        order.append(node.node_name)
                    times[node.node_name].append(node.real_time.total_seconds() * 1e3)
            others = others_cores(before, cpu_clock())
        out: dict[str, float] = {}
        current = "stem"
        for name in order:
            label = self.labels.get(name)
            if label is not None:
                current = label
            out[current] = out.get(current, 0.0) + min(times[name])
        return out, others
