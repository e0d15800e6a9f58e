"""compress.deploy and compress.predict: the shipped model takes uint8 RGB images, for real.

Real OpenVINO PrePostProcessor, NNCF INT8, ONNX Runtime, PIL-written PNG/JPEG files and the predict
CLI, on a tiny CAS-ViT-style model trained for a few seconds on sklearn digits at 32 px.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from compress.deploy import (
    RT_INFO_KEY,
    DeployWrapper,
    export_deploy_onnx,
    load_image,
    read_labels,
    rgb_stats,
    with_preprocessing,
    write_labels,
)
from compress.predict import main as predict_main
from nas.data import _builtin_arrays, _resize, calibration_subset, load_dataset
from nas.errors import UserError, run_cli
from nas.export import convert_openvino, export_onnx, save_openvino
from nas.latency import compile_openvino, count_fake_quantize, ir_precision
from nas.models import build_model
from nas.quantization import quantize_openvino
from nas.train import train_proxy
from tests.conftest import tiny_arch

RES = 32
THREADS = 1  # tiny models; and one thread does not stall when the machine is busy
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
N_EVAL = 60  # validation images compared across runtimes
N_PNG = 8  # images given to the CLI
ROOT = Path(__file__).resolve().parent.parent


def nhwc(images: torch.Tensor) -> np.ndarray:
    """Dataset images uint8 (N, 1|3, R, R) -> uint8 RGB (N, R, R, 3), as a user's files hold them."""
    return images.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()


def ov_run(path_or_model, images: np.ndarray, precision: str) -> np.ndarray:
    request = compile_openvino(path_or_model, THREADS, precision).create_infer_request()
    out = []
    for image in images:
        request.infer({0: image[None]})
        out.append(request.get_output_tensor(0).data.copy())
    return np.concatenate(out)


def scaled_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference relative to the logits' scale (at least 1)."""
    return float(np.abs(actual - expected).max()) / max(1.0, float(np.abs(expected).max()))


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits", RES, limit=600)


@pytest.fixture(scope="module")
def trained(splits):
    torch.manual_seed(0)
    model = build_model(tiny_arch("catm"))
    result = train_proxy(model, splits, epochs=3, batch_size=16, lr=3e-3, threads=THREADS)
    return model.eval(), result.accuracy


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, splits, trained) -> dict:
    """A shipped model directory: fp32.xml, int8.xml, model.onnx (all uint8 NHWC), labels.txt,
    plus the undeployed float IR/ONNX (NCHW float input) and PNGs of validation images."""
    model, _ = trained
    out = tmp_path_factory.mktemp("shipped")
    mean, std = splits.train.mean, splits.train.std
    source = convert_openvino(model, RES)
    calibration = [x[None].numpy() for x in calibration_subset(splits, 32)]
    int8 = quantize_openvino(convert_openvino(model, RES), calibration)
    files = {
        "dir": out,
        "source": source,
        "int8_source": int8,
        "fp32": save_openvino(with_preprocessing(source, mean, std), out / "fp32.xml"),
        "int8": save_openvino(with_preprocessing(int8, mean, std), out / "int8.xml"),
        "onnx": export_deploy_onnx(model, out / "model.onnx", RES, mean, std),
        "labels": write_labels(out, NAMES),
        "plain_ir": save_openvino(source, out / "plain" / "plain.xml"),
        "plain_onnx": export_onnx(model, out / "plain" / "plain.onnx", RES),
    }
    pngs = []
    for i in range(N_PNG):
        image = splits.val.images[i, 0].numpy()  # 1-channel uint8 R x R: written as a grayscale PNG
        pngs.append(out / f"val{i}_{NAMES[int(splits.val.labels[i])]}.png")
        Image.fromarray(image, mode="L").save(pngs[-1])
    files["pngs"] = pngs
    return files


def test_rgb_stats_expand_grayscale_and_check() -> None:
    assert rgb_stats([0.5], [0.25]) == ([0.5] * 3, [0.25] * 3)
    assert rgb_stats(torch.tensor([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]))[0] == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        rgb_stats([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="std positive"):
        rgb_stats([0.1], [0.0])


def test_labels_round_trip(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "out", NAMES)
    assert path == tmp_path / "out" / "labels.txt"
    assert path.read_text() == "".join(f"{n}\n" for n in NAMES)
    assert read_labels(path) == list(NAMES)
    with pytest.raises(ValueError, match="single lines"):
        write_labels(tmp_path, ["a", "b\nc"])
    with pytest.raises(UserError, match="labels file not found"):
        read_labels(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="empty"):
        read_labels(tmp_path / "empty.txt")


def test_load_image_resizes_like_training(tmp_path: Path) -> None:
    """A raw 8x8 digit written as PNG loads to exactly the pixels the digits dataset trains on."""
    raw, _ = _builtin_arrays("digits")  # uint8 (N, 1, 8, 8): the source load_dataset resizes
    full = load_dataset("digits", RES)
    parts = (full.train, full.val, getattr(full, "test", None))  # every image of every split
    pool = torch.cat([part.images for part in parts if part is not None])
    for i in (0, 1, 17):
        Image.fromarray(raw[i, 0], mode="L").save(tmp_path / f"d{i}.png")
        image = load_image(tmp_path / f"d{i}.png", RES)
        assert image.dtype == np.uint8 and image.shape == (RES, RES, 3)
        expected = _resize(torch.from_numpy(raw[i:i + 1].copy()), (RES, RES))[0, 0].numpy()
        assert all(np.array_equal(image[..., c], expected) for c in range(3))
        assert (pool[:, 0] == torch.from_numpy(expected)).all(dim=(1, 2)).any()  # a training-pipeline image
    # Any size and aspect: shorter side to R, centre crop; RGB and JPEG read too.
    rgb = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "wide.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    wide = load_image(tmp_path / "wide.png", RES)
    assert wide.shape == (RES, RES, 3) and load_image(tmp_path / "wide.jpg", RES).shape == (RES, RES, 3)
    expected = _resize(torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous(), (RES, round(70 * RES / 45)))
    left = (expected.shape[-1] - RES) // 2
    assert np.array_equal(wide, expected[0, :, :, left:left + RES].permute(1, 2, 0).numpy())


def test_preprocessed_fp32_ir_and_onnx_match_torch(splits, trained, shipped) -> None:
    """(a) uint8 images through the IR / ONNX give the torch model's logits on normalised floats."""
    model, _ = trained
    source = shipped["source"]
    assert source.inputs[0].get_element_type().get_type_name() == "f32"  # the source is untouched
    assert list(source.inputs[0].get_shape()) == [1, 3, RES, RES]
    import openvino as ov

    ir = ov.Core().read_model(str(shipped["fp32"]))
    assert ir.inputs[0].get_element_type().get_type_name() == "u8"
    assert list(ir.inputs[0].get_shape()) == [1, RES, RES, 3] and ir.inputs[0].get_any_name() == "input"
    assert ir_precision(shipped["fp32"]) == "fp32"
    assert "uint8 RGB NHWC" in ir.get_rt_info([RT_INFO_KEY]).astype(str)
    with pytest.raises(ValueError, match="already preprocessed"):
        with_preprocessing(ir, splits.train.mean, splits.train.std)

    idx = torch.arange(N_EVAL)
    floats, _ = splits.val.batch(idx)
    images = nhwc(splits.val.images[idx])
    with torch.no_grad():
        expected = model(floats).numpy()
        wrapped = DeployWrapper(model, splits.train.mean, splits.train.std).eval()(torch.from_numpy(images))
    assert torch.equal(wrapped, torch.from_numpy(expected))  # same affine map as training: bit-identical

    got_ir = ov_run(shipped["fp32"], images, "fp32")
    session = ort.InferenceSession(str(shipped["onnx"]), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("input", "tensor(uint8)", [1, RES, RES, 3])
    got_onnx = np.concatenate([session.run(None, {"input": image[None]})[0] for image in images])
    got_onnx_ov = ov_run(shipped["onnx"], images, "fp32")  # OpenVINO reads the uint8 ONNX too
    print(f"\nlogit scale {np.abs(expected).max():.3f}; scaled max diff IR {scaled_diff(got_ir, expected):.2e}, "
          f"ONNX {scaled_diff(got_onnx, expected):.2e}, ONNX on OpenVINO {scaled_diff(got_onnx_ov, expected):.2e}")
    for got in (got_ir, got_onnx, got_onnx_ov):
        assert scaled_diff(got, expected) <= 1e-3
        assert (got.argmax(-1) == expected.argmax(-1)).all()


def test_preprocessed_int8_ir_agrees_with_float(splits, shipped) -> None:
    """(b) NNCF INT8 IR + preprocessing: int8 precision, top-1 agrees with the float source and with
    the same INT8 network fed normalised floats."""
    assert count_fake_quantize(shipped["int8_source"]) > 0
    assert ir_precision(shipped["int8"]) == "int8"
    idx = torch.arange(N_EVAL)
    images = nhwc(splits.val.images[idx])
    int8 = ov_run(shipped["int8"], images, "int8")
    fp32 = ov_run(shipped["fp32"], images, "fp32")
    int8_floats = ov_run(shipped["int8_source"], splits.val.batch(idx)[0].numpy(), "int8")
    vs_float = float((int8.argmax(-1) == fp32.argmax(-1)).mean())
    vs_same = float((int8.argmax(-1) == int8_floats.argmax(-1)).mean())
    print(f"\nINT8 top-1 agreement: with FP32 {vs_float:.3f}, with INT8 on floats {vs_same:.3f} "
          f"(scaled max diff {scaled_diff(int8, int8_floats):.2e})")
    assert vs_float >= 0.9 and vs_same >= 0.95


def test_predict_cli_prints_labels_and_right_digits(splits, trained, shipped) -> None:
    """(c) python -m compress.predict on PNGs: label file names, right digit first for most images."""
    _, accuracy = trained
    pngs = [str(p) for p in shipped["pngs"]]
    cmd = [sys.executable, "-m", "compress.predict", "--model", str(shipped["fp32"]), *pngs, "--threads", "1"]
    proc = subprocess.run([*cmd, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["precision"], report["resolution"], report["runtime"]) == ("fp32", RES, "openvino")
    truth = [NAMES[int(y)] for y in splits.val.labels[:N_PNG]]
    firsts = []
    for result, png in zip(report["results"], pngs, strict=True):
        top = result["top"]
        assert result["image"] == png and len(top) == 5
        assert all(row["label"] in NAMES for row in top)
        scores = [row["score"] for row in top]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-9
        firsts.append(top[0]["label"])
    # The PNG round trip is lossless: the CLI's top-1 is the IR's top-1 on the dataset's own images.
    ir = ov_run(shipped["fp32"], nhwc(splits.val.images[:N_PNG]), "fp32")
    assert firsts == [NAMES[i] for i in ir.argmax(-1)]
    right = sum(f == t for f, t in zip(firsts, truth, strict=True))
    print(f"\nval accuracy {accuracy:.3f}; CLI right first on {right}/{N_PNG}")
    assert right >= 6


def test_predict_text_onnx_and_int8(shipped, capsys) -> None:
    pngs = [str(p) for p in shipped["pngs"][:2]]
    assert run_cli(predict_main, ["--model", str(shipped["onnx"]), *pngs, "--top", "3", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 4 and lines[0] == pngs[0] and lines[4] == pngs[1]
    assert lines[1].strip().startswith("1. ") and lines[1].split()[1] in NAMES
    assert run_cli(predict_main, ["--model", str(shipped["int8"]), pngs[0], "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8" and report["results"][0]["top"][0]["label"] in NAMES
    # Without a labels.txt beside the model, class indices are printed.
    alone = shipped["dir"] / "alone"
    alone.mkdir(exist_ok=True)
    shutil.copy(shipped["onnx"], alone / "m.onnx")
    assert run_cli(predict_main, ["--model", str(alone / "m.onnx"), pngs[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["top"][0]["label"] in [str(i) for i in range(10)]


def _bad_inputs(shipped: dict, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a fragment the error line must contain)."""
    png = str(shipped["pngs"][0])
    fp32, onnx = str(shipped["fp32"]), str(shipped["onnx"])
    (tmp / "notes.png").write_text("not an image at all\n")
    (tmp / "garbage.xml").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp / "garbage.onnx").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    xml = Path(fp32).read_bytes()
    (tmp / "cut.xml").write_bytes(xml[: len(xml) // 2])
    shutil.copy(Path(fp32).with_suffix(".bin"), tmp / "cut.bin")
    (tmp / "nobin.xml").write_bytes(xml)
    (tmp / "cutbin.xml").write_bytes(xml)
    weights = Path(fp32).with_suffix(".bin").read_bytes()
    (tmp / "cutbin.bin").write_bytes(weights[: len(weights) // 2])
    image = Path(png).read_bytes()
    (tmp / "cut.png").write_bytes(image[: len(image) // 2])
    data = Path(onnx).read_bytes()
    (tmp / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp / "model.pt").write_bytes(b"\0" * 16)
    (tmp / "short.txt").write_text("zero\none\n")
    (tmp / "dir.xml").mkdir(exist_ok=True)
    return {
        "missing image": (["--model", fp32, str(tmp / "nope.png")], "image not found"),
        "non-image": (["--model", fp32, str(tmp / "notes.png")], "cannot read image"),
        "truncated png": (["--model", fp32, str(tmp / "cut.png")], "cannot read image"),
        "directory image": (["--model", fp32, str(tmp)], "is a directory"),
        "missing model": (["--model", str(tmp / "none.xml"), png], "model file not found"),
        "directory model": (["--model", str(tmp / "dir.xml"), png], "is a directory"),
        "garbage xml": (["--model", str(tmp / "garbage.xml"), png], "not a readable OpenVINO IR"),
        "truncated xml": (["--model", str(tmp / "cut.xml"), png], "not a readable OpenVINO IR"),
        "xml without bin": (["--model", str(tmp / "nobin.xml"), png], "not a readable OpenVINO IR"),
        "truncated bin": (["--model", str(tmp / "cutbin.xml"), png], "Incorrect weights in bin file"),
        "garbage onnx": (["--model", str(tmp / "garbage.onnx"), png], "not a readable ONNX model"),
        "truncated onnx": (["--model", str(tmp / "cut.onnx"), png], "not a readable ONNX model"),
        "other suffix": (["--model", str(tmp / "model.pt"), png], "unsupported model file type"),
        "float IR": (["--model", str(shipped["plain_ir"]), png], "not a uint8 RGB image"),
        "float ONNX": (["--model", str(shipped["plain_onnx"]), png], "not a uint8 RGB image"),
        "wrong labels": (["--model", fp32, png, "--labels", str(tmp / "short.txt")], "2 labels"),
        "missing labels": (["--model", fp32, png, "--labels", str(tmp / "none.txt")], "labels file not found"),
        "bad --top": (["--model", fp32, png, "--top", "0"], "--top"),
        "no images": (["--model", fp32], "IMAGE"),
    }


def test_predict_bad_inputs_one_line_exit_2(shipped, tmp_path: Path, capfd) -> None:
    """(d) every bad input: exit 2, stdout empty, exactly one stderr line `error: ...` naming it
    (fd-level capture, so native log lines from OpenVINO / ONNX Runtime would show)."""
    for name, (argv, fragment) in _bad_inputs(shipped, tmp_path).items():
        code = run_cli(predict_main, argv)
        out, err = capfd.readouterr()
        lines = err.splitlines()
        assert code == 2, name
        assert out == "", name
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (name, err)


def test_predict_cli_garbage_model_is_one_line(shipped, tmp_path: Path) -> None:
    """The real process: a garbage .xml gives one stderr line and exit 2 (no absl lines, no traceback)."""
    argv, _ = _bad_inputs(shipped, tmp_path)["garbage xml"]
    proc = subprocess.run([sys.executable, "-m", "compress.predict", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "garbage.xml" in lines[0], proc.stderr
