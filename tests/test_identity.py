"""Resume identity (nas.identity): a changed identity key is refused in one line; only-how-much keys are not."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas.errors import UserError, run_cli
from nas.identity import IDENTITY_KEYS, RunIdentity, check_identity, read_identity

GOOD = dict(budget_ms=5.0, space_file="s.yaml", space={"name": "tiny"}, proxy_resolution=64, target_resolution=224,
            data=None, limit=None, num_classes=10, seed=0, epochs=3, batch_size=64, lr=2e-3, min_epochs=1, eta=3,
            sampler="nsga2", backend="openvino", precision="fp32", threads=2,
            latency_settings={"passes": 5}, machine="m", fit=True)
CHANGED = dict(budget_ms=3.0, space_file="t.yaml", space={"name": "other"}, proxy_resolution=32,
               target_resolution=128, data="digits", limit=300, num_classes=100, seed=1, epochs=2, batch_size=32,
               lr=1e-3, min_epochs=2, eta=2, sampler="tpe", backend="onnxruntime", precision="bf16", threads=1,
               latency_settings={"passes": 2}, machine="other machine", fit=False)


def test_every_identity_key_has_a_change_case() -> None:
    assert set(GOOD) == set(CHANGED) == set(IDENTITY_KEYS)
    RunIdentity(**GOOD)
    RunIdentity(**CHANGED)


@pytest.mark.parametrize("key", [k for k in IDENTITY_KEYS if k != "machine"])
def test_a_changed_key_is_refused_in_one_line_naming_it(key: str) -> None:
    previous = RunIdentity(**GOOD).model_dump(mode="json")
    current = RunIdentity(**{**GOOD, key: CHANGED[key]}).model_dump(mode="json")
    with pytest.raises(UserError) as info:
        check_identity(previous, current, "run/config.yaml")
    message = str(info.value)
    assert message.startswith(f"run/config.yaml: {key} differs from the run being resumed") and "\n" not in message
    if key not in ("space", "latency_settings"):  # big values are not printed, only that they changed
        assert f"{GOOD[key]!r} -> {CHANGED[key]!r}" in message
    assert "pass a new --run" in message


def test_another_machine_is_refused_naming_it(tmp_path: Path) -> None:
    previous = RunIdentity(**GOOD).model_dump(mode="json")
    current = {**previous, "machine": "elsewhere"}
    with pytest.raises(UserError, match="measured on another machine.*an unrecorded machine.*new --run"):
        check_identity(previous, current, str(tmp_path / "config.yaml"))


def test_same_identity_and_how_much_settings_pass() -> None:
    identity = RunIdentity(**GOOD).model_dump(mode="json")
    check_identity(identity, dict(identity), "x")
    # --trials / --timeout / --study-name live in config.yaml but are not part of the identity
    check_identity({**identity, "trials": 30, "timeout_s": 1620.0}, {**identity, "trials": 60, "timeout_s": 10.0}, "x")


def test_keys_an_older_run_did_not_record_are_skipped() -> None:
    identity = RunIdentity(**GOOD).model_dump(mode="json")
    older = {k: v for k, v in identity.items() if k not in ("eta", "min_epochs", "precision")}
    check_identity(older, {**identity, "eta": 4, "precision": "bf16"}, "x")
    with pytest.raises(UserError, match="seed differs"):
        check_identity(older, {**identity, "seed": 9}, "x")


def test_read_identity(tmp_path: Path) -> None:
    assert read_identity(tmp_path / "none.yaml") == {}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"budget_ms": 5.0, "trials": 3}))
    assert read_identity(path) == {"budget_ms": 5.0, "trials": 3}
    path.write_text("- a list\n")
    with pytest.raises(UserError, match="not a search config"):
        read_identity(path)
    path.write_text("budget_ms: [unclosed\n")
    with pytest.raises(UserError, match="cannot read the run being resumed"):
        read_identity(path)


def test_the_search_cli_refuses_before_touching_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In process (the CLI's `main` under `run_cli`, as `python -m nas.search` runs it): a config.yaml
    recorded with seed 0, resumed with seed 1, gives exit 2, one line, and leaves the run as it was."""
    from nas.search import main

    run = tmp_path / "run"
    run.mkdir()
    space = Path(__file__).parent / "data" / "tiny_space.yaml"
    args = ["--results", str(tmp_path), "--run", "run", "--space", str(space), "--limit", "100", "--threads", "1",
            "--budget-ms", "5", "--quiet", "--quick-latency"]
    from nas.latency import MeasureSettings, machine_id
    from nas.space import load_space

    loaded = load_space(space)
    recorded = RunIdentity(**{**GOOD, "space_file": str(space), "space": loaded.model_dump(mode="json"),
                              "proxy_resolution": loaded.resolution.proxy,
                              "target_resolution": loaded.resolution.target, "limit": 100, "threads": 1,
                              "latency_settings": vars(MeasureSettings.quick()), "machine": machine_id()})
    (run / "config.yaml").write_text(yaml.safe_dump(recorded.model_dump(mode="json")))
    before = (run / "config.yaml").read_bytes()
    assert run_cli(main, [*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed differs from the run being resumed (0 -> 1)" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"] and (run / "config.yaml").read_bytes() == before


def test_measurement_settings_added_since_a_run_are_not_a_change() -> None:
    """A run recorded before a MeasureSettings field existed resumes; a changed shared field is refused."""
    identity = RunIdentity(**GOOD).model_dump(mode="json")
    newer = {**identity, "latency_settings": {"passes": 5, "max_wait_seconds": 60.0}}
    check_identity(identity, newer, "x")
    with pytest.raises(UserError, match="latency_settings differs"):
        check_identity(identity, {**newer, "latency_settings": {"passes": 3, "max_wait_seconds": 60.0}}, "x")
