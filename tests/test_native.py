"""The fast path's own CPU kernels (``dnas.supernet.native``) compute what ATen computes.

BatchNorm in training mode (outputs, saved statistics, running statistics, every gradient, double
backward) and the 3x3 window sum (forward, and its backward, which is itself), on channels-last float32
maps of the widths the kernels are compiled for; and the fast path falls back to ATen when the kernels
are switched off or cannot be built.
"""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from dnas.spaces import get_space
from dnas.supernet import build_supernet, fast_ops, native

CL = torch.channels_last


@pytest.fixture(scope="module", autouse=True)
def built():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the native kernels cannot be built here (the fast path uses ATen's)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build warns: make it this test's error, with its text
        assert native.available()


def _map(c: int, n: int = 4, size: int = 6, seed: int = 0, scale: float = 3.0, shift: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, size, size, generator=g) * scale + shift).contiguous(memory_format=CL)


@pytest.mark.parametrize("c", [4, 16, 64])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_batch_norm_equals_aten_forward_backward_and_running_stats(c, affine):
    z = _map(c, seed=c)
    g = torch.Generator().manual_seed(1)
    weight = torch.rand(c, generator=g) + 0.5 if affine != "none" else None
    bias = torch.randn(c, generator=g) if affine == "both" else None
    grad = torch.randn(z.shape, generator=g).contiguous(memory_format=CL)
    results = []
    for use_native in (False, True):
        zi = z.clone().requires_grad_()
        wi = None if weight is None else weight.clone().requires_grad_()
        bi = None if bias is None else bias.clone().requires_grad_()
        rm, rv = torch.full((c,), 0.25), torch.full((c,), 2.0)
        if use_native:
            y = native.batch_norm(zi, wi, bi, rm, rv, 0.1, 1e-5)
        else:
            y = F.batch_norm(zi, rm, rv, wi, bi, True, 0.1, 1e-5)
        y.backward(grad)
        results.append((y, rm, rv, zi.grad, None if wi is None else wi.grad, None if bi is None else bi.grad))
    for what, ours, aten in zip(("output", "running_mean", "running_var", "grad z", "grad weight", "grad bias"),
                                results[1], results[0]):
        if aten is None:
            assert ours is None, what
            continue
        torch.testing.assert_close(ours, aten, rtol=1e-5, atol=1e-5 * float(aten.detach().abs().max()), msg=what)
    assert results[1][0].is_contiguous(memory_format=CL) and results[1][3].is_contiguous(memory_format=CL)


def test_batch_norm_without_running_stats_and_only_some_gradients():
    z = _map(16)
    w = (torch.rand(16) + 0.5).requires_grad_()
    y = native.batch_norm(z, w, None, None, None, 0.0, 1e-5)  # z needs no gradient: only ∂w is computed
    ref = F.batch_norm(z, None, None, w, None, True, 0.0, 1e-5)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    (gw,) = torch.autograd.grad(y.square().sum(), w)
    (gw_ref,) = torch.autograd.grad(ref.square().sum(), w)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-4)


def test_batch_norm_statistics_are_stable_far_from_zero():
    # A large common offset: sums of squares taken naively would lose the variance to cancellation.
    z = _map(16, scale=0.01, shift=1000.0)
    y = native.batch_norm(z, None, None, None, None, 0.0, 1e-5)
    ref = F.batch_norm(z.double(), None, None, None, None, True, 0.0, 1e-5)
    assert float((y.double() - ref).abs().max()) < 1e-2


def test_batch_norm_double_backward_equals_aten():
    z = _map(8).requires_grad_()
    w = (torch.rand(8) + 0.5).requires_grad_()
    v = torch.randn(z.shape).contiguous(memory_format=CL)
    hvps = []
    for fn in (lambda: native.batch_norm(z, w, None, None, None, 0.0, 1e-5),
               lambda: F.batch_norm(z, None, None, w, None, True, 0.0, 1e-5)):
        gz, gw = torch.autograd.grad((fn() ** 3).sum(), (z, w), create_graph=True)
        hvps.append(torch.autograd.grad((gz * v).sum() + gw.sum(), (z, w)))
    for ours, aten in zip(*hvps):
        torch.testing.assert_close(ours, aten, rtol=1e-4, atol=1e-4 * float(aten.abs().max()))


@pytest.mark.parametrize("c,size", [(4, 1), (16, 5), (32, 8)])
def test_box_sum_is_the_3x3_window_sum_and_its_own_adjoint(c, size):
    x = _map(c, size=size).requires_grad_()
    grad = _map(c, size=size, seed=3)
    ours = native.box_sum3x3(x)
    xr = x.detach().clone().requires_grad_()
    ref = F.conv2d(xr, torch.ones(c, 1, 3, 3), None, 1, 1, 1, c)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert ours.is_contiguous(memory_format=CL)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)


def test_applies_only_to_dense_channels_last_float32_cpu_maps_of_compiled_widths():
    z = _map(16)
    assert native.applies(z)
    assert not native.applies(z.contiguous())  # NCHW
    assert not native.applies(z.double())
    assert not native.applies(_map(17))  # not a compiled width
    assert not native.applies(z[:, :8])  # a channel slice: not dense
    assert not native.applies(z[:1, :, :1, :1])  # one value per channel: ATen raises its own error
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.applies(z)
    assert {4, 16, 32, 64} <= native.WIDTHS
    assert all(bool(torch.ops.dnas_native.supported_width(c)) for c in native.WIDTHS)


def _nb201_step(monkeypatch, setting: str):
    monkeypatch.setenv("DNAS_NATIVE", setting)
    torch.manual_seed(0)
    model = build_supernet(get_space("nb201"), channels=4, cells=1, impl="fast")
    x = torch.randn(4, 3, 8, 8)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    return loss, {n: p.grad for n, p in model.named_parameters()}


def test_fast_path_uses_the_kernels_unless_switched_off(monkeypatch):
    calls = []
    for name in ("batch_norm", "box_sum3x3"):
        original = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _f=original, _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    loss_on, grads_on = _nb201_step(monkeypatch, "1")
    assert {"batch_norm", "box_sum3x3"} <= set(calls)
    calls.clear()
    loss_off, grads_off = _nb201_step(monkeypatch, "0")
    assert calls == []
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-5, atol=1e-6)
    for n in grads_off:
        torch.testing.assert_close(grads_on[n], grads_off[n], rtol=1e-4, atol=1e-5, msg=n)


def test_a_failed_build_warns_once_and_the_fast_path_uses_aten(monkeypatch):
    from torch.utils import cpp_extension

    def fail(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_registered", lambda: False)
    monkeypatch.setattr(cpp_extension, "load", fail)
    with pytest.warns(RuntimeWarning, match="native CPU kernels unavailable .*Ninja is required"):
        assert not native.enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.enabled()  # decided once per process
        z = _map(16)
        bn = torch.nn.BatchNorm2d(16, affine=False)
        torch.testing.assert_close(fast_ops.batch_norm(z, bn), F.batch_norm(z, None, None, None, None, True, 0.1, 1e-5))


def test_status_says_whether_the_kernels_were_used_without_building_them(monkeypatch):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_load", lambda: pytest.fail("status() must not build"))
    monkeypatch.setenv("DNAS_NATIVE", "1")
    assert native.status() == "unused"
    monkeypatch.setenv("DNAS_NATIVE", "0")
    assert native.status() == "off"
    assert not native.enabled()  # switched off: not even asked to load
    monkeypatch.setenv("DNAS_NATIVE", "1")
    native._state["ok"] = True
    assert native.status() == "on"
    native._state["ok"] = False
    assert native.status() == "unavailable"


def test_the_build_is_named_by_source_and_announced_only_when_it_will_compile(monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    tag = native._build_tag()
    edited = tmp_path / "edited.cpp"
    edited.write_bytes(native.SOURCE.read_bytes() + b"\n// edited\n")
    monkeypatch.setattr(native, "SOURCE", edited)
    assert native._build_tag() != tag  # another source: another cached build, never another checkout's

    loads = []
    monkeypatch.setattr(cpp_extension, "load", lambda name, *a, **k: loads.append((name, k["build_directory"])))
    monkeypatch.setattr(native, "_registered", lambda: False)
    monkeypatch.setenv("DNAS_NATIVE_DIR", str(tmp_path / "ext"))
    assert native._load()
    name, build_dir = loads[-1]
    assert name == f"dnas_native_{native._build_tag()}" and build_dir == str(tmp_path / "ext" / name)
    assert "building the fast path's CPU kernels" in capsys.readouterr().err
    (tmp_path / "ext" / name / f"{name}.so").write_bytes(b"")
    assert native._load()
    assert capsys.readouterr().err == ""  # already built: loads silently
