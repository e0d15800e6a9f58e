"""Search-space loading, validation messages and sampling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from nas.arch import Arch
from nas.errors import ConfigError
from nas.models import build_model
from nas.space import DEFAULT_SPACE, load_arch_file, load_space

GOOD = {
    "name": "t",
    "resolution": {"proxy": 32, "target": 64},
    "stem": {"kind": "dsconv", "width": 8, "depth": 1},
    "stages": [{"mixer": ["catm", "litemla"], "depth": {"low": 1, "high": 2}, "width": [16, 32],
                "head_dim": 8, "downsample": "conv"}],
    "head": {"kind": "evit", "widths": [[32, 48]]},
}


def with_change(path: str, value: object) -> dict:
    """GOOD with one key (dotted path, list indices as numbers) replaced or removed (value None)."""
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


# (description, YAML text or data, expected fragment of the one-line message)
BAD_SPACES = [
    ("unknown top key", with_change("colour", "red"), "colour: unknown key"),
    ("unknown stage key", with_change("stages.0.kernel", 3), "stages[0].kernel: unknown key"),
    ("unknown stem key", with_change("stem.stride", 2), "stem.stride: unknown key"),
    ("unknown mixer", with_change("stages.0.mixer", "swin"), "stages[0].mixer"),
    ("unknown mixer in list", with_change("stages.0.mixer", ["catm", "swin"]), "stages[0].mixer[1]"),
    ("empty mixer list", with_change("stages.0.mixer", []), "stages[0].mixer"),
    ("empty width list", with_change("stages.0.width", []), "stages[0].width"),
    ("width as string", with_change("stages.0.width", "wide"), "stages[0].width"),
    ("width as float", with_change("stages.0.width", 16.5), "stages[0].width"),
    ("negative width", with_change("stages.0.width", -16), "stages[0].width"),
    ("huge width", with_change("stages.0.width", 100000), "stages[0].width"),
    ("huge depth", with_change("stages.0.depth", 1000), "stages[0].depth"),
    ("negative depth", with_change("stages.0.depth", -1), "stages[0].depth"),
    ("range low > high", with_change("stages.0.depth", {"low": 3, "high": 1}), "low (3) must be <= high (1)"),
    ("range unknown key", with_change("stages.0.depth", {"low": 1, "high": 2, "by": 1}), "stages[0].depth"),
    ("width not divisible by head_dim", with_change("stages.0.width", [16, 20]),
     "width 20 is not divisible by head_dim 8"),
    ("keep_ratio of 1", with_change("stages.0.keep_ratio", 1.0), "stages[0].keep_ratio"),
    ("keep_ratio as bool", with_change("stages.0.keep_ratio", True), "stages[0].keep_ratio"),
    ("unknown downsample", with_change("stages.0.downsample", "pool"), "stages[0].downsample"),
    ("unknown stem kind", with_change("stem.kind", "resnet"), "stem.kind"),
    ("unknown head kind", with_change("head.kind", "mlp"), "head.kind"),
    ("head widths of three", with_change("head.widths", [[1, 2, 3]]), "head.widths"),
    ("no stages", with_change("stages", []), "stages"),
    ("stages missing", with_change("stages", None), "stages"),
    ("mixer missing", with_change("stages.0.mixer", None), "stages[0].mixer"),
    ("too many stages", with_change("stages", [GOOD["stages"][0]] * 9), "stages"),
    ("proxy resolution tiny", with_change("resolution.proxy", 4), "resolution.proxy"),
    ("glsra on a 1x1 map", with_change("resolution.proxy", 16) | {"stages": [
        {"mixer": "glsra", "depth": 1, "width": 16, "head_dim": 8, "downsample": "conv"}] * 3},
     "glsra needs at least 2x2"),
    ("top level is a list", "- 1\n- 2\n", "expected a mapping"),
    ("not YAML", "stages: [unclosed\n", "not valid YAML at line"),
    ("binary junk", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text file"),
    ("empty file", "", "expected a mapping"),
]


@pytest.mark.parametrize(("case", "content", "expected"), BAD_SPACES, ids=[c[0] for c in BAD_SPACES])
def test_bad_space_gives_one_clear_line(tmp_path: Path, case: str, content: object, expected: str) -> None:
    path = tmp_path / "space.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


def test_cli_reports_bad_space_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(with_change("stages.0.mixer", "swin")))
    out = subprocess.run([sys.executable, "-m", "nas.search", "--space", str(path), "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "stages[0].mixer" in out.stderr and "Traceback" not in out.stderr
    assert "'catm'" in out.stderr  # names the allowed values


def test_good_space_loads() -> None:
    assert load_space(DEFAULT_SPACE).stages


def test_validating_a_space_imports_no_torch() -> None:
    """The mixer catalogue (nas.mixers) is torch-free, so checking a YAML is quick."""
    code = ("import sys; from nas.space import load_space; from nas.presets import load_preset; load_space(); "
            "load_preset('cagevit'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_default_space_samples_buildable_models() -> None:
    space = load_space()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        arch = space.sample(trial, num_classes=10)
        seen.update(s.mixer for s in arch.stages)
        model = build_model(arch).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, space.resolution.proxy, space.resolution.proxy))
        assert out.shape == (1, 10) and torch.isfinite(out).all()
        assert Arch.from_yaml(arch.to_yaml()) == arch
        study.tell(trial, 0.0)
    assert seen == {"catm", "litemla", "glsra", "mbconv"}


def test_unused_knobs_do_not_change_the_hash() -> None:
    space = load_space()
    a = space.sample(optuna.trial.FixedTrial(_fixed_params(space, "catm", keep=0.5)), 10)
    b = space.sample(optuna.trial.FixedTrial(_fixed_params(space, "catm", keep=0.75)), 10)
    c = space.sample(optuna.trial.FixedTrial(_fixed_params(space, "glsra", keep=0.75)), 10)
    assert a.hash == b.hash != c.hash


def _fixed_params(space, mixer: str, keep: float) -> dict:
    params = {name: values[0] for name, values in space.knobs().items()}
    for i in (2, 3):
        params |= {f"s{i}.mixer": mixer, f"s{i}.keep_ratio": keep}
    return params


def test_every_knob_is_suggested_on_every_trial() -> None:
    """The relative samplers see only parameters every trial has: each knob of each stage is one."""
    space = load_space()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(12):
        trial = study.ask()
        space.sample(trial, num_classes=10)
        study.tell(trial, 0.0)
    common = optuna.search_space.intersection_search_space(study.get_trials())
    assert set(common) == set(space.knobs())
    for i in range(len(space.stages)):
        assert {f"s{i}.mixer", f"s{i}.depth", f"s{i}.width", f"s{i}.head_dim", f"s{i}.keep_ratio"} <= set(common)


def test_encode_round_trips_sampled_archs_and_projects_baselines() -> None:
    from nas.baselines import FAMILIES, WIDTH_LADDER

    space = load_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(20):
        arch = space.sample(study.ask(), num_classes=10)
        params, exact = space.encode(arch)
        assert exact and space.decode(params, 10) == arch
    knobs = space.knobs()
    for family, build in FAMILIES.items():
        for scale in WIDTH_LADDER:
            arch = build(scale, 10)
            params, exact = space.encode(arch)
            assert set(params) == set(knobs) and all(params[k] in knobs[k] for k in params), family
            assert not exact  # none of the hand designs lies in the default space (see enqueue_baselines)
            projected = space.sample(optuna.trial.FixedTrial(params), 10)  # a valid, buildable point
            assert projected == space.decode(params, 10)
    cas = FAMILIES["casvit"](0.25, 10)
    params, _ = space.encode(cas)
    assert [params[f"s{i}.width"] for i in range(4)] == [16, 24, 48, 96]  # 16, 16, 32, 56 -> nearest allowed
    assert [params[f"s{i}.mixer"] for i in range(4)] == ["mbconv", "catm", "catm", "catm"]  # s0: mbconv only


def test_arch_file_rejects_choices(tmp_path: Path) -> None:
    arch = Arch.from_yaml((DEFAULT_SPACE.parent / "presets" / "casvit_xs.yaml").read_text()).to_dict()
    arch["stages"][0]["width"] = [48, 64]
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump(arch))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.width: an architecture file takes one value"):
        load_arch_file(path)
