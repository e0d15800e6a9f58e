"""Per-family INT8 rules as data (nas/quant_rules.yaml), loaded and validated with pydantic.

An unknown key, an unknown family (mixer) or an OpenVINO op type no opset has is a one-line
UserError naming the file and the entry (the CLIs exit 2). `resolve(mixers)` merges the families a
model contains: float op types/patterns and the residual-add choice stay per family (applied to
that family's stages by nas.quantization), the model-wide NNCF settings come from the first family
in the file's order that the model contains.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from nas.errors import UserError

RULES_FILE = Path(__file__).resolve().parent / "quant_rules.yaml"
PSEUDO_FAMILIES = ("stem", "head")  # entries for the stem's / head's ops (their float rules only)


@functools.cache
def openvino_op_types() -> frozenset[str]:
    """Every op of every OpenVINO opset, normalised (lower case, no underscores): TopK -> topk."""
    import openvino as ov

    names: set[str] = set()
    for version in range(1, 40):
        module = getattr(ov, f"opset{version}", None)
        if module is not None:
            names |= {n.replace("_", "").lower() for n in dir(module) if not n.startswith("_")}
    return frozenset(names)


def _op_type(op_type: str) -> str:
    if op_type.replace("_", "").lower() not in openvino_op_types():
        raise ValueError(f"unknown OpenVINO op type {op_type!r}")
    return op_type


def _pattern(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    return pattern


OpType = Annotated[str, AfterValidator(_op_type)]  # per item, so an error names its index
Pattern = Annotated[str, AfterValidator(_pattern)]


class FamilyRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    float_types: tuple[OpType, ...] = ()
    float_patterns: tuple[Pattern, ...] = ()
    float_activation_matmuls: bool = True
    quantize_residual_adds: bool = True
    model_type: Literal["transformer", "cnn"] = "transformer"
    preset: Literal["performance", "mixed"] | None = None
    smooth_quant_alpha: float | None = None
    fast_bias_correction: bool = True
    note: str = ""

    @field_validator("smooth_quant_alpha")
    @classmethod
    def _alpha(cls, alpha: float | None) -> float | None:
        if alpha is not None and alpha != -1 and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"smooth_quant_alpha must be in [0, 1] or -1 (off), got {alpha}")
        return alpha

    def settings(self) -> dict[str, object]:
        """The model-wide NNCF settings (those a hybrid takes from one family)."""
        return {k: getattr(self, k) for k in ("model_type", "preset", "smooth_quant_alpha", "fast_bias_correction")}


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    families: dict[str, FamilyRules]

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: dict[str, FamilyRules]) -> dict[str, FamilyRules]:
        from nas.mixers import mixer_names

        for name in families:
            if name not in mixer_names() and name not in PSEUDO_FAMILIES:
                raise ValueError(f"unknown family (mixer) {name!r}; known: "
                                 f"{', '.join([*mixer_names(), *PSEUDO_FAMILIES])}")
        return families

    def family(self, mixer: str) -> FamilyRules:
        """A family's rules; a mixer the file does not name is quantized whole with the defaults."""
        return self.families.get(mixer, FamilyRules())

    def lead(self, mixers: list[str] | None) -> FamilyRules:
        """The family whose model-wide settings a model with these stage mixers takes."""
        present = (set(self.families) if mixers is None else set(mixers)) - set(PSEUDO_FAMILIES)
        return next((rules for name, rules in self.families.items() if name in present), FamilyRules())

    def digest(self) -> str:
        """Hash of what the rules do (notes excluded: rewording one changes no INT8 model)."""
        quiet = {name: rules.model_copy(update={"note": ""}) for name, rules in self.families.items()}
        return hashlib.sha256(self.model_copy(update={"families": quiet}).model_dump_json().encode()).hexdigest()[:10]


def parse_rules(data: object, source: str) -> RulesFile:
    from nas.space import _one_line  # the project's pydantic error -> `file: key.path: message`

    try:
        return RulesFile.model_validate(data)
    except ValidationError as exc:
        raise UserError(_one_line(source, exc)) from None


@functools.cache
def _load(path: Path, mtime: float) -> RulesFile:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read INT8 rules ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return parse_rules(data, str(path))


def rules_path() -> Path:
    """nas/quant_rules.yaml, or the file VITNAS_QUANT_RULES names (INT8 latency and compress alike)."""
    return Path(os.environ.get("VITNAS_QUANT_RULES") or RULES_FILE)


def load_rules(path: str | Path | None = None) -> RulesFile:
    """The rules file (default `rules_path()`), validated; cached until the file changes."""
    path = Path(path or rules_path())
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise UserError(f"{path}: cannot read INT8 rules ({exc.strerror})") from None
    return _load(path, mtime)
