"""A run's identity: every setting its trials' numbers depend on, as one validated pydantic model.

Resuming a run (or a worker joining its study) with any of these changed would mix incomparable
trials in one front, so `check_identity` refuses it in one line (UserError, exit 2). Settings that
only say how much to do (`--trials`, `--timeout`) or where (`--storage`) are not part of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from nas.errors import UserError

Positive = Annotated[int, Field(ge=1)]


class RunIdentity(BaseModel):
    """What a run's trials are measured under. Frozen and strict: a field is set once, with its type."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    budget_ms: Annotated[float, Field(gt=0)]
    space_file: str
    space: dict[str, Any]  # the validated space itself: an edited file with the same name differs
    proxy_resolution: Positive
    target_resolution: Positive
    data: str | None
    limit: Positive | None
    num_classes: Annotated[int, Field(ge=2)]
    seed: int
    epochs: Positive
    batch_size: Positive
    lr: Annotated[float, Field(gt=0)]
    min_epochs: Positive  # the first successive-halving rung
    eta: Annotated[int, Field(ge=2)]  # rung spacing and promotion ratio
    sampler: str
    backend: str
    precision: str
    threads: Positive
    latency_settings: dict[str, float | int]  # nas.latency.MeasureSettings (full or --quick-latency)
    machine: str  # fingerprint of CPU model, ISA features and OpenVINO capabilities
    fit: bool = True  # the space's widths fitted to this machine before the search (nas.fit); --no-fit: as written


IDENTITY_KEYS = tuple(RunIdentity.model_fields)


def check_identity(previous: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse (one line) when a recorded identity key differs from the current one.

    Keys an older run did not record are skipped: there is nothing to compare them with.
    """
    for key in IDENTITY_KEYS:
        if key in previous and key in current and _differs(key, previous[key], current[key]):
            if key == "machine":
                raise UserError(f"{where}: this run's latencies were measured on another machine "
                                f"({previous_machine(where)}); latencies of different machines are not comparable: "
                                "pass a new --run here")
            shown = "<changed>" if key in ("space", "latency_settings") else f"{previous[key]!r} -> {current[key]!r}"
            raise UserError(f"{where}: {key} differs from the run being resumed ({shown}); "
                            "pass a new --run to start another search")


def _differs(key: str, previous: Any, current: Any) -> bool:
    """Measurement settings added since a run was recorded (e.g. the interference limits) are not a change."""
    if key == "latency_settings" and isinstance(previous, dict) and isinstance(current, dict):
        shared = previous.keys() & current.keys()
        return any(previous[k] != current[k] for k in shared)
    return previous != current


def previous_machine(where: str) -> str:
    from nas.report import run_machine

    return run_machine(Path(where).parent) if where.endswith("config.yaml") else "recorded in the study"


def read_identity(path: Path) -> dict[str, Any]:
    """The identity keys recorded in a run's config.yaml ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the run being resumed ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a search config (expected a mapping)")
    return data
