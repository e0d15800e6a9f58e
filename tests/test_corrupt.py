"""Corrupt and truncated inputs to every command: one line naming the file, exit code 2, nothing changed.

A scripted corpus: each case copies the shared tiny run (or makes model files beside it), damages one
file the way a full disk, a killed copy or a wrong path would (garbage bytes, truncation, an empty
file, JSON/YAML of the wrong type, an IR whose .bin is missing or short, weights of another
architecture), runs the command and checks: exit code 2, exactly one line on stderr (`error: `, no
traceback, no native library log lines), the damaged file named in it, and every file under the
case's directory byte-identical to before. Most cases run the CLIs' `main` in process (start-up
would dominate); `test_real_processes` runs a few as `python -m`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import TinyRun, copy_run, tiny_arch

ROOT = Path(__file__).resolve().parent.parent
GARBAGE = bytes(range(256)) * 16  # not UTF-8, not a pickle, not SQLite, not protobuf


@dataclass(frozen=True)
class Case:
    module: str
    args: list[str]
    damaged: Path  # the file the error line must name
    root: Path  # every file under it must be unchanged


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def models(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny run's best winner as the files the commands read: a float IR pair, an ONNX file, a
    shipped (uint8 image input) IR with labels.txt, another arch's state_dict, and one image."""
    import numpy as np
    import torch
    from PIL import Image

    from compress.deploy import with_preprocessing, write_labels
    from nas.export import convert_openvino, export_onnx, save_openvino
    from nas.models import build_model
    from nas.runs import get_winner

    out = tmp_path_factory.mktemp("corrupt-models")
    model = get_winner(tiny_run.path, None).model()
    ov_model = convert_openvino(model, 32)
    save_openvino(ov_model, out / "model.xml")
    export_onnx(model, out / "model.onnx", 32)
    save_openvino(with_preprocessing(ov_model, [0.5], [0.25]), out / "shipped.xml")
    write_labels(out, [str(i) for i in range(10)])
    torch.save(build_model(tiny_arch("mbconv", num_classes=7)).state_dict(), out / "other_arch.pt")
    Image.fromarray(np.full((20, 20, 3), 128, dtype=np.uint8)).save(out / "image.png")
    return {name: out / name for name in ("model.xml", "model.onnx", "shipped.xml", "labels.txt", "other_arch.pt",
                                          "image.png")}


def model_files(models: dict[str, Path], directory: Path, *names: str) -> Path:
    """Copies of model files (an .xml with its .bin) in `directory`."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(models[name], directory / name)
        if name.endswith(".xml"):
            shutil.copy(models[name].with_suffix(".bin"), directory / Path(name).with_suffix(".bin"))
    return directory


# --- the corpus: each builder damages a file and returns the command that must refuse it ---------

Builder = Callable[[TinyRun, dict[str, Path], Path], Case]


def _winner(run: Path) -> Path:
    from nas.runs import get_winner

    return get_winner(run, None).directory


def _final_dir(run: Path) -> Path:
    directory = run / "final" / _winner(run).name.split("-", 1)[1]
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _compress_dir(run: Path, *parts: str) -> Path:
    directory = run / "compress" / _winner(run).name
    directory.joinpath(*parts).mkdir(parents=True, exist_ok=True)
    return directory.joinpath(*parts)


def latency_ir(name: str, damage: Callable[[Path], None], file: str = "model.xml",
               backend: str = "openvino") -> Builder:
    def build(run: TinyRun, models: dict[str, Path], tmp: Path) -> Case:
        directory = model_files(models, tmp / "files", file)
        damage(directory)
        return Case("nas.latency", ["--ir", str(directory / file), "--backend", backend, "--no-cache", "--quick"],
                    directory / (name or file), directory)
    return build


def latency_arch(content: bytes) -> Builder:
    def build(run: TinyRun, models: dict[str, Path], tmp: Path) -> Case:
        (tmp / "files").mkdir(parents=True)
        (tmp / "files" / "arch.yaml").write_bytes(content)
        return Case("nas.latency", ["--arch", str(tmp / "files" / "arch.yaml"), "--no-cache", "--quick"],
                    tmp / "files" / "arch.yaml", tmp / "files")
    return build


def latency_cache(damage: Callable[[Path], None]) -> Builder:
    def build(run: TinyRun, models: dict[str, Path], tmp: Path) -> Case:
        directory = model_files(models, tmp / "files", "model.xml")
        cache = copy_settled(run, tmp).path / "latency_cache.sqlite"  # a real cache, with entries
        damage(cache)
        return Case("nas.latency", ["--ir", str(directory / "model.xml"), "--cache", str(cache), "--quick"],
                    cache, tmp)
    return build


def copy_settled(run: TinyRun, tmp: Path) -> TinyRun:
    """A copy of the run whose latency cache holds everything in its main file: this process still has
    the original open (the fixture measured into it), so the copy comes with a -wal file that the
    first command to open it would fold in (SQLite's recovery, not a change of the run)."""
    import sqlite3

    copy = copy_run(run, tmp)
    connection = sqlite3.connect(copy.path / "latency_cache.sqlite")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return copy


def in_run(module: str, damage: Callable[[Path], Path], *args: str) -> Builder:
    """`module --run <copy>` (nas.search: the copy's own resume arguments) after `damage(copy)`,
    which returns the damaged file."""
    def build(run: TinyRun, models: dict[str, Path], tmp: Path) -> Case:
        copy = copy_settled(run, tmp)
        damaged = damage(copy.path)
        argv = (copy.args(*[a.format(run=copy.path, tmp=tmp) for a in args]) if module == "nas.search"
                else ["--run", str(copy.path), *args])
        return Case(module, argv, damaged, tmp)
    return build


def _put(path_of: Callable[[Path], Path], content: bytes | Callable[[Path], bytes]) -> Callable[[Path], Path]:
    def damage(run: Path) -> Path:
        path = path_of(run)
        path.write_bytes(content(run) if callable(content) else content)
        return path
    return damage


def _cut(path_of: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def damage(run: Path) -> Path:
        path = path_of(run)
        truncate(path)
        return path
    return damage


def _other_arch(run: Path) -> bytes:
    return (run.parent.parent / "files" / "other_arch.pt").read_bytes()


def with_other_arch(builder: Builder) -> Builder:
    """The builder, with another architecture's state_dict at <tmp>/files/other_arch.pt."""
    def build(run: TinyRun, models: dict[str, Path], tmp: Path) -> Case:
        model_files(models, tmp.parent / "files", "other_arch.pt")
        return builder(run, models, tmp)
    return build


def _finished_with_garbage_metrics(run: Path) -> Path:
    """Final training that finished (weights.pt) but whose metrics.json is damaged."""
    directory = _final_dir(run)
    (directory / "weights.pt").write_bytes((_winner(run) / "weights.pt").read_bytes())
    (directory / "metrics.json").write_bytes(GARBAGE)
    return directory / "metrics.json"


def _int8(run: Path, metrics: bytes, xml: bytes) -> Path:
    directory = _compress_dir(run, "int8")
    (directory / "metrics.json").write_bytes(metrics)
    (directory / "model.xml").write_bytes(xml)
    (directory / "model.bin").write_bytes(b"")
    return directory


def predict(file: str, damage: Callable[[Path], None], named: str, *extra: str) -> Builder:
    def build(run: TinyRun, models: dict[str, Path], tmp: Path) -> Case:
        directory = model_files(models, tmp / "files", file, "labels.txt", "image.png")
        damage(directory)
        return Case("compress.predict", ["--model", str(directory / file), str(directory / "image.png"), *extra],
                    directory / named, directory)
    return build


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(content)


def _truncate(name: str) -> Callable[[Path], None]:
    return lambda d: truncate(d / name)


def _sqlite_study(run: Path) -> Path:
    return run / "study.db"


QUANTIZE = ("--calibration", "8", "--val-limit", "8", "--no-export", "--quiet")
CORPUS: dict[str, Builder] = {
    # nas.latency: model files, arch files, the cache
    "latency garbage xml": latency_ir("", _write("model.xml", GARBAGE)),
    "latency truncated xml": latency_ir("", _truncate("model.xml")),
    "latency empty xml": latency_ir("", _write("model.xml", b"")),
    "latency xml without its bin": latency_ir("", lambda d: (d / "model.bin").unlink()),
    "latency bin shorter than the xml expects": latency_ir("model.bin", _truncate("model.bin")),
    "latency garbage onnx (openvino)": latency_ir("", _write("model.onnx", GARBAGE), "model.onnx"),
    "latency truncated onnx (onnxruntime)": latency_ir("", _truncate("model.onnx"), "model.onnx", "onnxruntime"),
    "latency empty onnx (onnxruntime)": latency_ir("", _write("model.onnx", b""), "model.onnx", "onnxruntime"),
    "latency arch yaml of the wrong type": latency_arch(b"- a list\n- not an arch\n"),
    "latency arch yaml garbage": latency_arch(GARBAGE),
    "latency cache garbage": latency_cache(lambda p: p.write_bytes(GARBAGE)),
    "latency cache truncated": latency_cache(truncate),
    # nas.search resuming a run
    "search study.db garbage": in_run("nas.search", _put(_sqlite_study, GARBAGE)),
    "search study.db truncated": in_run("nas.search", _cut(_sqlite_study)),
    "search study.db empty": in_run("nas.search", _put(_sqlite_study, b"")),
    "search journal garbage": in_run("nas.search", _put(lambda r: r / "journal.log", GARBAGE),
                                     "--storage", "journal:{run}/journal.log"),
    "search latency cache garbage": in_run("nas.search", _put(lambda r: r / "latency_cache.sqlite", GARBAGE)),
    "search latency cache truncated": in_run("nas.search", _cut(lambda r: r / "latency_cache.sqlite")),
    "search config.yaml garbage": in_run("nas.search", _put(lambda r: r / "config.yaml", GARBAGE)),
    "search splits.json truncated": in_run("nas.search", _cut(lambda r: r / "splits.json")),
    "search splits.json of other images": in_run("nas.search", _put(lambda r: r / "splits.json", b'{"train": 1}')),
    "search --space yaml of the wrong type": in_run("nas.search", _put(lambda r: r / "space.yaml", b"42\n"),
                                                    "--space", "{run}/space.yaml"),
    # nas.train (final training, nas.final)
    "train winner weights of another arch": with_other_arch(
        in_run("nas.train", _put(lambda r: _winner(r) / "weights.pt", _other_arch), "--epochs", "1", "--quiet")),
    "train splits.json truncated": in_run("nas.train", _cut(lambda r: r / "splits.json"), "--epochs", "1", "--quiet"),
    "train final metrics.json garbage": in_run("nas.train", _finished_with_garbage_metrics, "--epochs", "1",
                                               "--quiet"),
    "train --top with study.db garbage": in_run("nas.train", _put(_sqlite_study, GARBAGE), "--top", "1", "--quiet"),
    # compress.prune / quantize / export
    "prune winner weights truncated": in_run("compress.prune", _cut(lambda r: _winner(r) / "weights.pt"),
                                             "--ratio", "0.3", "--quiet"),
    "prune winner metrics.json of the wrong type": in_run("compress.prune",
                                                          _put(lambda r: _winner(r) / "metrics.json", b"[1, 2]"),
                                                          "--ratio", "0.3", "--quiet"),
    "prune final weights of another arch": with_other_arch(
        in_run("compress.prune", _put(lambda r: _final_dir(r) / "weights.pt", _other_arch), "--ratio", "0.3",
               "--quiet")),
    "prune config.yaml of the wrong type": in_run("compress.prune", _put(lambda r: r / "config.yaml", b"- x\n"),
                                                  "--ratio", "0.3", "--quiet"),
    "quantize pruned model garbage": in_run("compress.quantize",
                                            _put(lambda r: _compress_dir(r, "pruned") / "model.pt", GARBAGE),
                                            *QUANTIZE),
    "quantize pruned model is a state_dict": in_run(
        "compress.quantize", _put(lambda r: _compress_dir(r, "pruned") / "model.pt",
                                  lambda r: (_winner(r) / "weights.pt").read_bytes()), *QUANTIZE),
    "export int8 xml garbage": in_run("compress.export",
                                      lambda r: _int8(r, b'{"source": "fp32"}', GARBAGE) / "model.xml",
                                      "--val-limit", "4", "--quiet"),
    "export int8 metrics.json truncated": in_run("compress.export",
                                                 lambda r: _int8(r, b'{"source": "fp', b"<net/>") / "metrics.json",
                                                 "--val-limit", "4", "--quiet"),
    "export another winner's export metrics.json garbage": in_run(
        "compress.export", _put(lambda r: (r / "compress" / "99-0123456789ab" / "export").mkdir(parents=True)
                                or r / "compress" / "99-0123456789ab" / "export" / "metrics.json", GARBAGE),
        "--val-limit", "4", "--quiet"),
    "export winner arch.yaml empty": in_run("compress.export", _put(lambda r: _winner(r) / "arch.yaml", b""),
                                            "--quiet"),
    # compress.predict
    "predict garbage onnx": predict("model.onnx", _write("model.onnx", GARBAGE), "model.onnx"),
    "predict bin shorter than the xml expects": predict("shipped.xml", _truncate("shipped.bin"), "shipped.xml"),
    "predict labels garbage": predict("shipped.xml", _write("labels.txt", GARBAGE), "labels.txt"),
}


def run_in_process(module: str, args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`python -m MODULE ARGS` as its `main` under `run_cli`; stderr captured at the descriptor level."""
    from nas.errors import run_cli

    main = importlib.import_module(module + (".__main__" if module == "nas.latency" else "")).main
    capfd.readouterr()
    try:
        code = run_cli(main, args)
    except SystemExit as exc:  # argparse's own exit would not be one line
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capfd.readouterr().err


def assert_refused(case: Case, code: int, stderr: str, before: dict[str, str]) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, (code, stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert str(case.damaged) in lines[0], (str(case.damaged), lines[0])
    after = digest(case.root)
    assert after == before, f"{case.root} changed: {sorted(set(after.items()) ^ set(before.items()))}"


@pytest.mark.parametrize("name", list(CORPUS))
def test_corrupt_input_is_one_line_exit_2_and_changes_nothing(name: str, tiny_run: TinyRun,
                                                              models: dict[str, Path], tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    case = CORPUS[name](tiny_run, models, tmp_path / "case")
    before = digest(case.root)
    code, stderr = run_in_process(case.module, case.args, capfd)
    assert_refused(case, code, stderr, before)


REAL = ("latency garbage onnx (openvino)", "search study.db garbage", "predict bin shorter than the xml expects")


def test_real_processes(tiny_run: TinyRun, models: dict[str, Path], tmp_path: Path) -> None:
    """The same as `python -m` (concurrently: mostly interpreter start-up): native readers' own log
    lines (absl, protobuf) must not reach the terminal either."""
    cases = [CORPUS[name](tiny_run, models, tmp_path / str(i)) for i, name in enumerate(REAL)]
    before = [digest(case.root) for case in cases]
    env = {k: v for k, v in os.environ.items() if k not in ("VITNAS_FAULTS", "VITNAS_TRACE")}
    procs = [subprocess.Popen([sys.executable, "-m", case.module, *case.args], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for case in cases]
    for case, proc, digest_before in zip(cases, procs, before, strict=True):
        _, stderr = proc.communicate(timeout=300)
        assert_refused(case, proc.returncode, stderr, digest_before)


def test_the_corpus_covers_every_command() -> None:
    modules = {name.split()[0] for name in CORPUS}
    assert modules == {"latency", "search", "train", "prune", "quantize", "export", "predict"}
    assert len(CORPUS) >= 20
