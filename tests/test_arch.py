import subprocess
import sys

from nas.arch import Arch, StageSpec
from tests.conftest import tiny_arch


def test_yaml_round_trip_preserves_equality_and_hash(mixer: str) -> None:
    arch = tiny_arch(mixer)
    again = Arch.from_yaml(arch.to_yaml())
    assert again == arch
    assert again.hash == arch.hash
    assert hash(again) == hash(arch)


def test_hash_ignores_label_but_not_structure() -> None:
    arch = tiny_arch("catm")
    renamed = Arch.from_dict({**arch.to_dict(), "name": "other"})
    wider = Arch.from_dict({**arch.to_dict(), "stem_width": 16})
    assert renamed.hash == arch.hash
    assert wider.hash != arch.hash


def test_int_and_float_spellings_hash_equally() -> None:
    a = StageSpec("catm", 2, 32, expand=4)
    b = StageSpec("catm", 2, 32, expand=4.0)
    assert Arch(stages=(a,)).hash == Arch(stages=(b,)).hash


def test_hash_is_stable_across_processes() -> None:
    arch = tiny_arch("glsra")
    code = (
        "from tests.conftest import tiny_arch; print(tiny_arch('glsra').hash)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == arch.hash


def test_arch_is_frozen() -> None:
    arch = tiny_arch("mbconv")
    try:
        arch.stem_width = 3  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("Arch should be immutable")


def test_one_line_description_is_unambiguous() -> None:
    from nas.presets import load_preset
    from nas.report import describe

    text = describe(load_preset("casvit_xs"))
    assert text.startswith("conv2:") and " > " in text and text.endswith("> cas"), text
    assert "catm 2x" in text  # mixer, depth x width per stage
