"""train.precision on this machine: native bf16 detection, the notice, the step's XLA."""

import pytest

from textgen.model import precision


def test_native_bf16_is_either_flag():
    assert precision.native_bf16({"avx2", "amx_bf16"})
    assert precision.native_bf16({"avx512f", "avx512_bf16"})
    assert not precision.native_bf16({"avx2", "avx512f", "fma"})
    assert not precision.native_bf16(set())


def test_native_bf16_reads_this_machines_flags():
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        text = fh.read()
    assert precision.native_bf16() == ("amx_bf16" in text or "avx512_bf16" in text)


def test_the_notice_is_one_line_for_emulated_bf16_only():
    note = precision.precision_notice("bfloat16", {"avx2"})
    assert note is not None and "\n" not in note and "no native bf16" in note
    assert precision.precision_notice("bfloat16", {"amx_bf16"}) is None
    assert precision.precision_notice("float32", {"avx2"}) is None


def test_the_bf16_step_is_never_xla_compiled():
    assert precision.step_jit("float32", True) is True
    assert precision.step_jit("float32", False) is False
    assert precision.step_jit("bfloat16", True) is False
    assert precision.step_jit("bfloat16", False) is False


def test_compute_dtype_refuses_an_unknown_precision():
    assert precision.compute_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be"):
        precision.compute_dtype("float16")
