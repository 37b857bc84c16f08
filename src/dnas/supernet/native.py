"""The fast path's own CPU kernels (``csrc/batch_norm_cl.cpp``) for channels-last float32 maps.

- Training-mode BatchNorm. ATen's channels-last kernels vectorise over channels row by row; at the
  supernets' 16-64 channels that loop costs 8-16x a memory copy. Here the channel loop is unrolled at
  compile time (one instance per supported width): ~2x faster forward and backward at 64x16x32x32.
- The 3x3 window sum of NB201's average pool (zero padding): one pass instead of oneDNN's depthwise
  conv, ~1.8x faster at 64x16x32x32. It is its own adjoint, so its backward is the same kernel.

They are compiled with ``torch.utils.cpp_extension`` the first time a training forward needs them (~20 s;
needs a C++ compiler and ``ninja``, a dependency; cached per machine in torch's extension directory, or
``DNAS_NATIVE_DIR``). Where they cannot be built (one warning), or with ``DNAS_NATIVE=0``, the fast path
uses ATen's kernels. Both compute the same function (tests/test_native.py); the whole-step gain is
measured in benchmarks/README.md.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "batch_norm_cl.cpp"
_OFF = ("0", "false", "no", "off")
_state: dict[str, bool] = {}
_lock = threading.Lock()


def available() -> bool:
    """Whether the kernels are loaded, building them on the first call (a failed build warns once)."""
    if "ok" not in _state:
        with _lock:
            if "ok" not in _state:
                _state["ok"] = _load()
    return _state["ok"]


def enabled() -> bool:
    """``DNAS_NATIVE`` is not off (read per call, so tests can switch it) and the kernels load."""
    return os.environ.get("DNAS_NATIVE", "1").lower() not in _OFF and available()


def status() -> str:
    """For result.json (float32 sums differ from ATen's in the last bits): ``on`` (the fast path used the
    kernels), ``off`` (``DNAS_NATIVE=0``), ``unavailable`` (the build failed) or ``unused`` (never asked for:
    no CPU training forward of the fast path ran in this process). Never builds."""
    if os.environ.get("DNAS_NATIVE", "1").lower() in _OFF:
        return "off"
    if "ok" not in _state:
        return "unused"
    return "on" if _state["ok"] else "unavailable"


def _registered() -> bool:
    """Whether this process already holds the kernels (built by another copy of this module)."""
    try:
        return hasattr(torch.ops.dnas_native, "batch_norm")
    except (AttributeError, RuntimeError):
        return False


def _load() -> bool:
    if _registered():
        return True
    try:
        from torch.utils import cpp_extension

        _put_ninja_on_path()
        name = f"dnas_native_{_build_tag()}"
        root = os.environ.get("DNAS_NATIVE_DIR")
        build_dir = str(Path(root) / name) if root else cpp_extension._get_build_directory(name, False)
        Path(build_dir).mkdir(parents=True, exist_ok=True)
        if not (Path(build_dir) / f"{name}.so").exists():
            print("dnas: building the fast path's CPU kernels (once per machine, ~20 s)", file=sys.stderr, flush=True)
        cpp_extension.load(name, [str(SOURCE)], extra_cflags=["-O3", "-march=native", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], build_directory=build_dir, is_python_module=False,
                           verbose=False)
        return True
    except Exception as exc:  # no compiler, no ninja, a read-only cache: ATen's kernels still work
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        warnings.warn(f"dnas: native CPU kernels unavailable ({type(exc).__name__}: {first}); using ATen's "
                      "(DNAS_NATIVE=0 skips the build)", RuntimeWarning, stacklevel=3)
        return False


def _build_tag() -> str:
    """A fingerprint of what the build depends on: this CPU's model and flags (``-march=native``: without
    it the unrolled channel loops get SSE2 only), the torch installation and the source. torch keys its
    cache by name alone and rebuilds when the source or flags change, so without this two checkouts or
    venvs sharing ~/.cache would rebuild each other's kernels (~20 s) in turn, and a home folder shared
    by machines with other CPUs would load code for the wrong instruction set."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    cpu = "\n".join(dict.fromkeys(lines)) or platform.machine() + platform.processor()
    digest = hashlib.sha256()
    for part in (cpu, torch.__version__, str(Path(torch.__file__).resolve())):
        digest.update(part.encode() + b"\0")
    digest.update(SOURCE.read_bytes())
    return digest.hexdigest()[:12]


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ``ninja`` wheel (a dependency) puts it in the environment's
    bin folder, which is not on PATH when a venv's tools are called by path (``.venv/bin/dnas``)."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + (os.pathsep + path if path else "")


# Widths the kernel is compiled for (csrc/batch_norm_cl.cpp, DNAS_BN_WIDTHS).
WIDTHS = frozenset({4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256})


def applies(z: torch.Tensor) -> bool:
    """Whether ``z`` is a map the kernels handle (without building them): a dense channels-last float32 CPU
    map of a compiled width with more than one value per channel, outside CPU autocast."""
    return (z.device.type == "cpu" and z.dtype == torch.float32 and z.dim() == 4 and z.shape[1] in WIDTHS
            and z.numel() > z.shape[1]  # one value per channel: F.batch_norm's own error, not a kernel's NaN
            and z.is_contiguous(memory_format=torch.channels_last)
            and not _cpu_autocast())


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device argument
        return torch.is_autocast_cpu_enabled()


def box_sum3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 window sums of ``x``, zero padding (``applies(x)`` must hold, and ``enabled()``). The kernel is its
    own adjoint: the backward runs it again, so double backward works."""
    return torch.ops.dnas_native.box_sum3x3(x)


def batch_norm(z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None, momentum: float,
               eps: float) -> torch.Tensor:
    """``F.batch_norm(z, running_mean, running_var, weight, bias, True, momentum, eps)`` (``applies(z)`` must
    hold, and ``enabled()``). Vectors that are not float32 contiguous go through as such copies."""
    def vec(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(torch.float32).contiguous()

    return torch.ops.dnas_native.batch_norm(z, vec(weight), vec(bias), running_mean, running_var, float(momentum),
                                            float(eps))
