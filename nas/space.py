"""The YAML search space: load, validate (one-line errors), and sample `Arch`es from Optuna trials.

A knob is a scalar (fixed), a list (categorical choices) or {low, high, step} (an integer range).
Unknown keys are errors. Cross-field rules (width divisible by head_dim, feature maps that do not
vanish at the proxy resolution) are checked over every combination the space allows, so a
sampled architecture always builds.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from nas.arch import STEM_STRIDES, Arch, StageSpec
from nas.errors import ConfigError
from nas.mixers import OPTIONAL_KNOBS, mixer_info

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml"


def _known_mixer(name: str) -> str:
    mixer_info(name)  # ValueError naming the known mixers
    return name


MixerName = Annotated[str, AfterValidator(_known_mixer)]  # the catalogue in nas.mixers
StemKind = Literal["conv2", "dsconv", "patch"]
DownsampleKind = Literal["none", "conv", "mbconv"]
HeadKind = Literal["cas", "evit", "vit"]
MAX_DEPTH = 32
MAX_WIDTH = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class IntRange(_Strict):
    low: Annotated[int, Field(ge=0)]
    high: Annotated[int, Field(ge=0)]
    step: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


def _nonempty(kind: Any) -> Any:
    return Annotated[list[kind], Field(min_length=1)]


Depth = Annotated[int, Field(ge=0, le=MAX_DEPTH)]
Width = Annotated[int, Field(ge=8, le=MAX_WIDTH)]
Ratio = Annotated[float, Field(gt=0.0, lt=1.0)]
Expand = Annotated[float, Field(ge=1.0, le=8.0)]
HeadDim = Annotated[int, Field(ge=4, le=256)]
Tokens = Annotated[int, Field(ge=1, le=64)]
PoolSize = Annotated[int, Field(ge=1, le=32)]


def choices(knob: Any) -> list[Any]:
    """Every value a knob allows, in order."""
    if isinstance(knob, IntRange):
        return knob.values()
    return list(knob) if isinstance(knob, list) else [knob]


class StemSpace(_Strict):
    kind: StemKind | _nonempty(StemKind) = "dsconv"
    width: Width | _nonempty(Width) | IntRange = 16
    depth: Depth | _nonempty(Depth) | IntRange = 1


class StageSpace(_Strict):
    mixer: MixerName | _nonempty(MixerName)
    depth: Depth | _nonempty(Depth) | IntRange
    width: Width | _nonempty(Width)
    expand: Expand | _nonempty(Expand) = 4.0
    downsample: DownsampleKind | _nonempty(DownsampleKind) = "conv"
    head_dim: HeadDim | _nonempty(HeadDim) = 16
    keep_ratio: Ratio | _nonempty(Ratio) = 0.5
    fusion_tokens: Tokens | _nonempty(Tokens) = 4
    pool_size: PoolSize | _nonempty(PoolSize) = 7

    @model_validator(mode="after")
    def _heads_divide_widths(self) -> StageSpace:
        attention = [m for m in choices(self.mixer) if mixer_info(m).attention]
        if not attention:
            return self
        for width, head_dim in itertools.product(choices(self.width), choices(self.head_dim)):
            if width % head_dim:
                raise ValueError(
                    f"width {width} is not divisible by head_dim {head_dim} "
                    f"(attention mixers {attention} need whole heads)"
                )
        return self


class ResolutionSpace(_Strict):
    proxy: Annotated[int, Field(ge=16, le=1024)] = 64
    target: Annotated[int, Field(ge=16, le=1024)] = 224


class HeadSpace(_Strict):
    kind: HeadKind | _nonempty(HeadKind) = "evit"
    widths: _nonempty(Annotated[list[Width], Field(min_length=2, max_length=2)]) = [[1024, 1280]]


class SearchSpace(_Strict):
    """A validated search space. `source` names the file for error messages."""

    name: str = "search space"
    resolution: ResolutionSpace = ResolutionSpace()
    stem: StemSpace = StemSpace()
    stages: Annotated[list[StageSpace], Field(min_length=1, max_length=8)]
    head: HeadSpace = HeadSpace()

    @model_validator(mode="after")
    def _maps_do_not_vanish(self) -> SearchSpace:
        """At the proxy resolution, with the stem and downsamplings that shrink most, every stage keeps
        a feature map its mixer works on. Stride-2 3x3 convs (padding 1) round up: 48 px -> 24 -> ... -> 2."""
        side = min(stem_side(self.resolution.proxy, k) for k in choices(self.stem.kind))
        stride = max(STEM_STRIDES[k] for k in choices(self.stem.kind))
        for index, stage in enumerate(self.stages):
            if set(choices(stage.downsample)) - {"none"}:
                stride *= 2
                side = (side + 1) // 2
            mixer = max(choices(stage.mixer), key=lambda m: mixer_info(m).min_side)
            need = mixer_info(mixer).min_side
            if side < need:
                raise ValueError(
                    f"stages[{index}]: proxy resolution {self.resolution.proxy} / stride {stride} leaves "
                    f"a {side}x{side} map; {f'{mixer} needs at least {need}x{need}' if need > 1 else 'it vanishes'} "
                    "(raise resolution.proxy or use fewer downsampling stages)"
                )
        return self

    def scaled(self, width: float) -> SearchSpace:
        """This space with every stem and stage width choice multiplied by `width` (nas.fit chooses it).

        Widths round to multiples of 8, and of every head_dim choice in a stage with an attention
        mixer (whole heads); choices that round together merge. The head's widths stay as written.
        """
        if width == 1.0:
            return self

        def scale(values: list[int], multiple: int) -> list[int]:
            out = [min(MAX_WIDTH, max(multiple, round(v * width / multiple) * multiple)) for v in values]
            return list(dict.fromkeys(out))

        data = self.model_dump()
        stem = self.stem.width
        data["stem"]["width"] = (IntRange(low=scale([stem.low], 8)[0], high=scale([stem.high], 8)[0], step=8)
                                 .model_dump() if isinstance(stem, IntRange) else _knob(scale(choices(stem), 8)))
        for stage, out in zip(self.stages, data["stages"], strict=True):
            multiple = 8
            if any(mixer_info(m).attention for m in choices(stage.mixer)):
                multiple = math.lcm(8, *choices(stage.head_dim))
            out["width"] = _knob(scale(choices(stage.width), multiple))
        return SearchSpace.model_validate(data)

    # ---- sampling -------------------------------------------------------------------------
    # Every knob of every stage is suggested under a fixed name on every trial, even a fixed one (a
    # one-choice distribution) and even one the chosen mixer ignores. Optuna's relative samplers
    # (NSGA-II crossover, multivariate TPE, GPSampler) model only the *intersection* of the completed
    # trials' distributions, so a knob suggested only for some mixers would drop out of it for all.
    # Unused knobs are then ignored when building the Arch (they keep the StageSpec defaults), so
    # equal networks still hash equally.
    def knobs(self) -> dict[str, list[Any]]:
        """Parameter name -> the values it can take, for every knob of the space (the trial encoding)."""
        return {name: choices(knob) for name, knob in self._knob_objects().items()}

    def sample(self, trial: Any, num_classes: int) -> Arch:
        """Draw an Arch through an Optuna trial (any object with suggest_categorical/suggest_int)."""
        return self.decode(self.suggest(trial), num_classes)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Suggest every knob (see above); returns the parameter dict."""
        params: dict[str, Any] = {}
        for name, knob in self._knob_objects().items():
            if isinstance(knob, IntRange):
                params[name] = trial.suggest_int(name, knob.low, knob.high, step=knob.step)
            else:
                params[name] = trial.suggest_categorical(name, choices(knob))
        return params

    def _knob_objects(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, st in enumerate(self.stages):
            for name in STAGE_KNOBS:
                out[f"s{i}.{name}"] = getattr(st, name)
        out |= {"stem.kind": self.stem.kind, "stem.width": self.stem.width, "stem.depth": self.stem.depth,
                "head.kind": self.head.kind, "head.widths": [_widths_label(w) for w in self.head.widths]}
        return out

    def decode(self, params: dict[str, Any], num_classes: int) -> Arch:
        """The Arch a full parameter dict describes; knobs the chosen mixer/stem/head ignore are dropped."""
        stages = []
        for i in range(len(self.stages)):
            fields = {name: params[f"s{i}.{name}"] for name in BASE_KNOBS}
            for name in mixer_info(fields["mixer"]).knobs:
                fields[name] = params[f"s{i}.{name}"]
            stages.append(StageSpec(**fields))
        stem_kind, head_kind = params["stem.kind"], params["head.kind"]
        head_widths = tuple(int(v) for v in params["head.widths"].split("x")) if head_kind == "evit" else ()
        return Arch(stages=tuple(stages), stem_kind=stem_kind, stem_width=params["stem.width"],
                    stem_depth=params["stem.depth"] if stem_kind == "dsconv" else 0, head_kind=head_kind,
                    head_widths=head_widths, num_classes=num_classes)

    def encode(self, arch: Arch) -> tuple[dict[str, Any], bool]:
        """The parameter dict of the space's point nearest to `arch`, and whether it is exact.

        Exact means `decode(params) == arch`. Otherwise each knob takes the allowed value nearest to
        the arch's (numbers: closest; names: the same if allowed, else the first choice), and when the
        arch has another number of stages, space stage i takes the arch's stage at the same relative
        depth. Used to enqueue hand-designed baselines, which need not lie in the space.
        """
        knobs = self.knobs()
        n, m = len(self.stages), len(arch.stages)
        params: dict[str, Any] = {}
        for i in range(n):
            source = arch.stages[round(i * (m - 1) / max(n - 1, 1))]
            for name in STAGE_KNOBS:
                params[f"s{i}.{name}"] = _nearest(getattr(source, name), knobs[f"s{i}.{name}"])
        params["stem.kind"] = _nearest(arch.stem_kind, knobs["stem.kind"])
        params["stem.width"] = _nearest(arch.stem_width, knobs["stem.width"])
        params["stem.depth"] = _nearest(arch.stem_depth, knobs["stem.depth"])
        params["head.kind"] = _nearest(arch.head_kind, knobs["head.kind"])
        pairs = [tuple(int(v) for v in label.split("x")) for label in knobs["head.widths"]]
        target = arch.head_widths if len(arch.head_widths) == 2 else pairs[0]
        nearest = min(pairs, key=lambda p: abs(p[0] - target[0]) + abs(p[1] - target[1]))
        params["head.widths"] = _widths_label(nearest)
        exact = self.decode(params, arch.num_classes) == arch
        return params, exact


def stem_side(resolution: int, kind: str) -> int:
    """Feature-map side after a stem (nas.models.blocks.build_stem): its 3x3 stride-2 convs round up,
    the 16x16 patch embedding rounds down."""
    if kind == "patch":
        return resolution // 16
    side = resolution
    for _ in range(STEM_STRIDES[kind].bit_length() - 1):
        side = (side + 1) // 2
    return side


BASE_KNOBS = ("mixer", "depth", "width", "expand", "downsample")  # every mixer reads these
STAGE_KNOBS = BASE_KNOBS + OPTIONAL_KNOBS


def _knob(values: list[Any]) -> Any:
    """A knob as YAML writes it: the value itself when there is one choice."""
    return values[0] if len(values) == 1 else values


def _widths_label(widths: Any) -> str:
    return "x".join(str(int(w)) for w in widths)


def _nearest(value: Any, allowed: list[Any]) -> Any:
    """`value` if allowed; else the closest number, or the first choice for names."""
    if value in allowed:
        return allowed[allowed.index(value)]  # the space's own object (4.0, not 4): Optuna compares choices
    if isinstance(value, int | float) and all(isinstance(a, int | float) for a in allowed):
        return min(allowed, key=lambda a: abs(a - value))
    return allowed[0]


# ---- loading with one-line errors -------------------------------------------------------------
_TYPE_TAGS = {"int", "float", "str", "bool", "IntRange", "none"}


def _key_path(loc: tuple[Any, ...]) -> str:
    """('stages', 0, 'list[...]', 1) -> 'stages[0][1]': drops pydantic's union-member tags."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item not in _TYPE_TAGS and "[" not in str(item) and not str(item).startswith("constrained-"):
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts) or "<top level>"


def _one_line(source: str, exc: ValidationError) -> str:
    """The most specific error, as `file: key.path: message (got value)`."""
    errors = exc.errors(include_url=False)
    # Union knobs give one error per alternative: our own rules and unknown keys say most, then
    # allowed-value lists, then the deepest location.
    telling = {"value_error": 3, "extra_forbidden": 2, "literal_error": 1}
    first = max(errors, key=lambda e: (telling.get(e["type"], 0), len(e["loc"])))
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{source}: {_key_path(first['loc'])}: {message}{shown}"


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (binary or not UTF-8)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_space(path: str | Path | None = None) -> SearchSpace:
    path = Path(path) if path is not None else DEFAULT_SPACE
    data = _read_yaml(path)
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(str(path), exc)) from None


class _ArchFile(_Strict):
    """A fixed architecture (a preset or a winner's arch.yaml): every knob a single value."""

    name: str = ""
    stem_kind: StemKind
    stem_width: Width
    stem_depth: Depth = 0
    head_kind: HeadKind
    head_widths: Annotated[list[Width], Field(max_length=2)] = []
    num_classes: Annotated[int, Field(ge=2)]
    stages: Annotated[list[StageSpace], Field(min_length=1, max_length=8)]

    @model_validator(mode="after")
    def _fixed(self) -> _ArchFile:
        for index, stage in enumerate(self.stages):
            chosen = [k for k, v in stage.__dict__.items() if isinstance(v, list | IntRange)]
            if chosen:
                raise ValueError(f"stages[{index}].{chosen[0]}: an architecture file takes one value, not choices")
        if self.head_kind == "evit" and len(self.head_widths) != 2:
            raise ValueError("head_kind evit needs head_widths: [H1, H2]")
        return self


def load_arch_file(path: str | Path) -> Arch:
    """Read and validate a fixed architecture YAML (same messages as the search space)."""
    path = Path(path)
    data = _read_yaml(path)
    try:
        _ArchFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(str(path), exc)) from None
    return Arch.from_dict(data)
