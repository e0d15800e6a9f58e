"""Chaos-testing and tracing hooks, inert unless their environment variables are set.

VITNAS_FAULTS: comma-separated entries `[kill:|int:]PHASE[:TRIAL|:MIXER]`.
  PHASE  latency  the latency backend errors before timing a trial's model
         export   the model fails to export for the latency backend
         measure  inside a latency measurement (machine lock held exclusive)
         train    inside a training epoch (machine lock held shared)
         done     the objective has returned; Optuna has not yet recorded the trial complete
         report   between result files (trials.csv written, pareto.png not yet)
         scale    before a baseline ladder measurement; TRIAL: the process's ladder step (0, 1, ...)
         claimed  a baseline's claim held, its trial not yet enqueued; TRIAL: the family's index
         enqueued a baseline's trial enqueued, its claim not yet released; TRIAL: the family's index
  TRIAL  the trial number it applies to; omitted: every trial (and hooks outside trials)
  MIXER  a mixer name: applies to the trials whose architecture has a stage of that mixer
  kill:  SIGKILL this process there (a crash); int: SIGINT it (Ctrl-C); without either, raise
         InjectedFault (the trial fails)
  e.g. VITNAS_FAULTS="latency:1,train:2,kill:measure:3,int:train:4,train:glsra"

VITNAS_TRACE=path: append `pid event wall monotonic` lines when the machine lock is taken and
released (`measure start`, `measure end`, `train start`, `train end`), to check the exclusion.

The `measure` and `train` points and the trace lines hook into the machine lock once `install()`
has run (the search does it); the other points are called where they happen.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable

from nas import machine_lock

PHASES = ("latency", "export", "measure", "train", "done", "report", "scale", "claimed", "enqueued")

SIGNALS = {"kill": signal.SIGKILL, "int": signal.SIGINT}
_current_trial: int | None = None  # set by the objective; read by hooks that do not know the trial
_current_mixers: frozenset[str] = frozenset()  # the running trial's mixers, also set by the objective


class InjectedFault(RuntimeError):
    """A failure requested through VITNAS_FAULTS."""


def _entries() -> list[tuple[str | None, str, int | str | None]]:
    spec = os.environ.get("VITNAS_FAULTS", "").strip()
    entries = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        fields = item.split(":")
        signal_name = fields[0] if fields[0] in SIGNALS else None
        fields = fields[1:] if signal_name else fields
        selector = fields[1] if len(fields) == 2 else None
        if not 1 <= len(fields) <= 2 or fields[0] not in PHASES or not (
                selector is None or selector.isdigit() or selector.isidentifier()):
            raise ValueError(f"VITNAS_FAULTS: bad entry {item!r}; expected [kill:|int:]PHASE[:TRIAL|:MIXER], PHASE "
                             f"in {PHASES}")
        entries.append((signal_name, fields[0], int(selector) if selector and selector.isdigit() else selector))
    return entries


def set_trial(number: int | None) -> None:
    global _current_trial, _current_mixers
    _current_trial, _current_mixers = number, frozenset()


def set_mixers(mixers: Iterable[str]) -> None:
    """The mixers of the running trial's architecture (for MIXER entries)."""
    global _current_mixers
    _current_mixers = frozenset(mixers)


def point(phase: str, trial: int | None = None) -> None:
    """A place where VITNAS_FAULTS may raise or kill; `trial` defaults to the running trial."""
    if "VITNAS_FAULTS" not in os.environ:
        return
    trial = _current_trial if trial is None else trial
    for signal_name, name, selector in _entries():
        if name == phase and (selector is None or selector == trial or selector in _current_mixers):
            if signal_name == "int":  # at the main thread, where Python raises KeyboardInterrupt
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            elif signal_name:
                os.kill(os.getpid(), SIGNALS[signal_name])
            if signal_name:
                time.sleep(60)  # the signal lands here (SIGINT: KeyboardInterrupt comes out of the sleep)
            raise InjectedFault(f"injected {phase} fault (VITNAS_FAULTS)")


def trace(event: str) -> None:
    """Append one line to VITNAS_TRACE (a single O_APPEND write, so concurrent writers never interleave)."""
    path = os.environ.get("VITNAS_TRACE")
    if not path:
        return
    line = f"{os.getpid()} {event.replace(' ', '_')} {time.time():.6f} {time.monotonic():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def lock_event(kind: str, event: str) -> None:
    """The machine lock hook: a trace line, and the `measure` / `train` fault point once it is held."""
    trace(f"{kind} {event}")
    if event == "start":
        point(kind)


def install() -> None:
    """Arm the hooks inside the machine lock for this process (idempotent)."""
    machine_lock.add_hook(lock_event)
