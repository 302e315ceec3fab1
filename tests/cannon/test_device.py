"""The GPU backend (``device="gpu"``, CuPy) and the array namespace the Cannon's maths is written against.

Three kinds of test:

* without CuPy (simulated by hiding it: ``sys.modules["cupy"] = None``, so these run on every
  machine): the namespaces, the one-line ``DeviceError`` naming the extra, the ``device``
  parameter, the CLI's exit status, and the CPU numbers unchanged by an explicit ``"cpu"``;
* the namespace is really consulted: a recording stand-in for it, and for the modules' own
  ``np``, shows that training and the χ² reduction ask the namespace for their array
  functions and plain NumPy for nothing but host-side constants. The stand-in is not NumPy,
  so this also runs the code's device branches (one block, a float64 product, the sort-based
  S/N, the collapse by a product, the non-raising singular check) on the host;
* on a GPU (skipped unless :func:`gpu_available`): fit and infer on the GPU against the CPU.
"""

import copy
import hashlib
import sys
import types

import numpy as np
import pytest

from cannonade import CannonModel, DeviceError, ParameterError
from cannonade.cannon import inference, training
from cannonade.cannon.vectorizer import design_matrix, term_exponents
from cannonade.execution import device as devices
from cannonade.execution import array_namespace, get_namespace, gpu_available, to_device, to_host

LABELS = ["x0", "x1", "x2"]


def mock(n_train=300, n_test=40, n_pixels=80, seed=5, snr=300.0):
    """Training and test spectra of an exact quadratic model (labels of scale ~1) with scatter
    0.003, high S/N; a few bad pixels. Returns (lab, flux, ivar) for training and test."""
    rng = np.random.default_rng(seed)
    E = term_exponents(len(LABELS), 2)
    theta = np.zeros((n_pixels, len(E)))
    theta[:, 0] = 1.0 - rng.uniform(0.0, 0.3, n_pixels)
    deg = E.sum(axis=1)
    theta[:, deg == 1] = rng.normal(0, 0.03, (n_pixels, len(LABELS)))
    theta[:, deg == 2] = rng.normal(0, 0.004, (n_pixels, int((deg == 2).sum())))

    def draw(n):
        lab = rng.normal(size=(n, len(LABELS))) * [300.0, 0.3, 0.2] + [5000.0, 4.0, 0.0]
        z = (lab - [5000.0, 4.0, 0.0]) / [300.0, 0.3, 0.2]
        f = design_matrix(z, E) @ theta.T + 0.003 * rng.normal(size=(n, n_pixels))
        flux, ivar = f + rng.normal(size=f.shape) / snr, np.full(f.shape, snr**2)
        bad = rng.random(f.shape) < 0.01
        flux[bad], ivar[bad] = np.nan, 0.0
        return lab, flux, ivar

    return draw(n_train), draw(n_test)


@pytest.fixture(scope="module")
def data():
    return mock()


@pytest.fixture(scope="module")
def model(data):
    """The CPU model of ``data``'s training set."""
    (lab, flux, ivar), _ = data
    return CannonModel(LABELS, show_progress=False).fit(lab, flux, ivar)


@pytest.fixture
def no_cupy(monkeypatch):
    """CuPy made unimportable for the test (whether or not it is installed)."""
    monkeypatch.setitem(sys.modules, "cupy", None)


# ----------------------------------------------------------------------------- without CuPy


def test_cpu_namespace_is_numpy_and_numpy_arrays_stay_on_the_host():
    assert get_namespace("cpu") is np
    a = np.ones(3)
    assert array_namespace(a, np.zeros((2, 2)), None, 1.5) is np
    assert array_namespace() is np
    assert to_host(a) is a and to_device(a, "cpu") is a  # no copy on the host
    assert to_device(None, "cpu") is None


def test_gpu_without_cupy_is_one_line_naming_the_extra(no_cupy):
    with pytest.raises(DeviceError) as e:
        get_namespace("gpu")
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'cannonade[gpu]'" in msg
    assert not gpu_available()
    with pytest.raises(DeviceError):
        to_device(np.ones(2), "gpu")
    with pytest.raises(ParameterError, match="'cpu', 'gpu'"):
        get_namespace("tpu")


def test_no_cupy_is_imported_by_the_package():
    """Importing cannonade (and running on the CPU) never imports CuPy."""
    import subprocess

    code = ("import sys, numpy as np, cannonade; from cannonade.execution import array_namespace; "
            "array_namespace(np.ones(2)); print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_device_is_a_checked_parameter():
    with pytest.raises(ParameterError, match="device"):
        CannonModel(LABELS, device="tpu")
    m = CannonModel(LABELS, device="gpu")  # constructing is fine without CuPy: resolved lazily
    assert m.device == "gpu" and m.get_params()["device"] == "gpu"
    assert m.clone().device == "gpu" and "device='gpu'" in repr(m)
    assert CannonModel(LABELS).device == "cpu"


def test_gpu_model_without_cupy_raises_device_error(no_cupy, data):
    (lab, flux, ivar), (_, tf, ti) = data
    with pytest.raises(DeviceError, match=r"cannonade\[gpu\]"):
        CannonModel(LABELS, device="gpu", show_progress=False).fit(lab, flux, ivar)
    m = CannonModel(LABELS, show_progress=False).fit(lab, flux, ivar)
    m.device = "gpu"  # a fitted model switched to the GPU: every array method refuses alike
    for call in (lambda: m.infer(tf, ti), lambda: m.predict(lab[:3]), lambda: m.pixel_chi2(lab[:3], tf[:3], ti[:3])):
        with pytest.raises(DeviceError):
            call()


@pytest.mark.parametrize("command", ["train", "cv"])
def test_cli_train_on_gpu_without_cupy_is_one_line_and_exit_2(no_cupy, tmp_path, capsys, command):
    from cannonade.cli import main

    # the device is checked before the (here absent) files are read
    argv = [command, str(tmp_path / "labels.csv"), str(tmp_path / "store.h5"), "--labels", "x0,x1",
            "--out", str(tmp_path / ("m.npz" if command == "train" else "cv")), "--device", "gpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cannonade {command}: error:") and "cannonade[gpu]" in err[0]


def test_run_device_is_a_config_key_and_a_cli_override(tmp_path):
    from cannonade import ConfigError
    from cannonade.cli import _run_config, build_parser
    from cannonade.config import load_config

    p = tmp_path / "c.toml"
    p.write_text('[target]\nspectra = "s"\ncatalogue = "c.fits"\n[reference]\ncatalogue = "r.fits"\n')
    assert load_config(p).run.device == "cpu"
    assert _run_config(build_parser().parse_args(["run", str(p), "--device", "gpu"])).run.device == "gpu"
    p.write_text(p.read_text() + '[run]\ndevice = "tpu"\n')
    with pytest.raises(ConfigError, match="run.device"):
        load_config(p)


def test_explicit_cpu_is_bit_identical_to_the_default(data, tmp_path):
    (lab, flux, ivar), (_, tf, ti) = data
    a = CannonModel(LABELS, show_progress=False).fit(lab, flux, ivar)
    b = CannonModel(LABELS, show_progress=False, device="cpu").fit(lab, flux, ivar)
    assert np.array_equal(a.theta_, b.theta_) and np.array_equal(a.s2_, b.s2_)
    assert a.training_hash_ == b.training_hash_
    ra, rb = a.infer(tf, ti), b.infer(tf, ti)
    for key in ("labels", "cov", "chi2", "snr", "flags"):
        assert np.array_equal(getattr(ra, key), getattr(rb, key), equal_nan=True), key
    assert np.array_equal(a.predict(lab[:5]), b.predict(lab[:5]))
    assert np.array_equal(a.pixel_chi2(lab[:5], tf[:5], ti[:5]), b.pixel_chi2(lab[:5], tf[:5], ti[:5]))
    # the device is not written to the model file: a file loads as "cpu", whatever trained it
    b.device = "gpu"
    b.save(tmp_path / "m.npz")
    assert CannonModel.load(tmp_path / "m.npz").device == "cpu"


# ----------------------------------------------------------------------------- the namespace is consulted


class Recording(types.ModuleType):
    """A stand-in for a module: every attribute is numpy's, and its name is recorded."""

    def __init__(self, name):
        super().__init__(name)
        self.used = set()

    def __getattr__(self, attr):
        self.used.add(attr)
        return getattr(np, attr)


#: what the maths may still take from plain NumPy: constants, dtypes, floating-point error
#: contexts, and host-side bookkeeping (the regularisation check, the training-set hash,
#: the index of the monomial collapse)
HOST_ONLY = {"errstate", "nan", "inf", "float32", "float64", "int64", "ndarray", "asarray", "broadcast_to",
             "ascontiguousarray", "triu_indices"}


@pytest.fixture
def recording(monkeypatch):
    """(xp, host): the namespace every array_namespace call returns, and the modules' own ``np``."""
    xp, host = Recording("xp"), Recording("host")
    monkeypatch.setattr(devices, "array_namespace", lambda *arrays: xp)
    monkeypatch.setattr(training, "np", host)
    monkeypatch.setattr(inference, "np", host)
    return xp, host


def test_training_asks_the_namespace_for_its_array_functions(data, recording):
    (lab, flux, ivar), _ = data
    E = term_exponents(len(LABELS), 2)
    X = design_matrix((lab - lab.mean(axis=0)) / lab.std(axis=0), E)
    xp, host = recording
    theta, s2, ok = training.train_pixels(X, E, flux, ivar, pixel_chunk=32, digest=hashlib.sha256(), show_progress=False)
    assert {"einsum", "linalg", "where", "sqrt", "isfinite", "zeros", "full", "arange", "flatnonzero", "nan_to_num",
            "diagonal", "clip", "abs", "maximum"} <= xp.used
    assert host.used <= HOST_ONLY, f"NumPy-only calls in the training: {sorted(host.used - HOST_ONLY)}"
    assert ok.all() and np.all(np.isfinite(theta)) and np.all(s2 > 0)


def test_the_reduction_asks_the_namespace_for_its_array_functions(data, model, recording):
    xp, host = recording
    _, (_, tf, ti) = data
    problem = inference.reduce_chi2(model.theta_, model.s2_, tf.astype(np.float32), ti.astype(np.float32))
    assert {"matmul", "einsum", "multiply", "subtract", "empty", "zeros", "take", "isfinite", "count_nonzero",
            "ascontiguousarray", "copyto", "take_along_axis", "sqrt"} <= xp.used
    assert host.used <= {"errstate", "nan", "inf", "float32", "float64", "int64"}, sorted(host.used)
    assert problem.M.dtype == np.float64 and problem.M32.dtype == np.float32


def test_the_device_branches_agree_with_the_host_path(data, model, monkeypatch):
    """The code's GPU branches, run on the host through a stand-in namespace (not NumPy itself):
    training (collapse by a product, the non-raising singular check, large batches) and the
    reduction (one block, a float64 product, the sort-based S/N) agree with the CPU path."""
    (lab, flux, ivar), (_, tf, ti) = data
    ref = model
    r_ref = ref.infer(tf, ti)
    p_ref = inference.reduce_chi2(ref.theta_, ref.s2_, tf, ti)
    monkeypatch.setattr(devices, "array_namespace", lambda *arrays: Recording("xp"))
    X = design_matrix(ref.scaler_.transform(lab), ref.exponents)
    theta, s2, ok = training.train_pixels(X, ref.exponents, flux, ivar, pixel_chunk=1024, show_progress=False)
    assert np.array_equal(ok, ref.pixel_ok_)
    np.testing.assert_allclose(theta, ref.theta_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(s2, ref.s2_, rtol=1e-7, atol=1e-14)
    p = inference.reduce_chi2(ref.theta_, ref.s2_, tf, ti)
    assert np.array_equal(p.snr, p_ref.snr, equal_nan=True) and np.array_equal(p.n_pixels, p_ref.n_pixels)
    np.testing.assert_allclose(p.b, p_ref.b, rtol=1e-12)
    np.testing.assert_allclose(p.M, p_ref.M, rtol=1e-6, atol=1e-6 * np.abs(p_ref.M).max())
    out = inference.solve_reduced(p, ref.exponents)
    scaled = ref.scaler_.transform(r_ref.labels)
    assert np.all(np.abs(out["labels"] - scaled) < 1e-6), np.abs(out["labels"] - scaled).max()


def test_a_singular_pixel_is_isolated_without_an_exception(monkeypatch):
    """The device branch of the batched solves (CuPy raises nothing): a matrix that is not
    positive definite is found from the result (non-finite, or not a Cholesky factor at all)
    and comes back NaN, the others untouched."""
    rng = np.random.default_rng(1)
    G = rng.normal(size=(5, 5, 5))
    A = G @ np.swapaxes(G, 1, 2) + 5 * np.eye(5)
    A[2] = 0.0  # singular
    A[3, 0, 0] = -1.0  # a negative pivot
    A[4] = np.eye(5)
    A[4, 0, 1] = A[4, 1, 0] = 2.0  # indefinite, with a positive diagonal

    def quiet_cholesky(a):
        """Like cuSOLVER's: no exception for a matrix that is not positive definite, a finite
        non-factor instead."""
        out = np.empty_like(a)
        for p in range(len(a)):
            try:
                out[p] = np.linalg.cholesky(a[p])
            except np.linalg.LinAlgError:
                out[p] = np.tril(a[p])
        return out

    monkeypatch.setattr(devices, "array_namespace", lambda *arrays: Recording("xp"))
    L, ok = training._stacked(quiet_cholesky, A, factor_of=A)
    assert ok.tolist() == [True, True, False, False, False] and np.isnan(L[2:]).all()
    np.testing.assert_allclose(L[:2] @ np.swapaxes(L[:2], 1, 2), A[:2], rtol=1e-12)
    x, ok = training._stacked(lambda a, b: np.linalg.solve(a + 0 * np.isnan(a), b), A[:2], np.ones((2, 5, 1)))
    assert ok.all() and np.isfinite(x).all()


def test_failed_matrices_of_a_stack_are_isolated_by_halving():
    """NumPy raises for the whole stack when one matrix is singular: the stack is split in halves
    until each failure is alone. Every other matrix gets exactly the inverse a call on it alone
    gives, the singular ones NaN, in a few calls per failure instead of one per matrix."""
    rng = np.random.default_rng(2)
    G = rng.normal(size=(256, 6, 6))
    A = G @ np.swapaxes(G, 1, 2) + 6 * np.eye(6)
    bad = [3, 4, 200]
    A[bad] = 0.0  # a pixel without a usable star
    calls = []

    def inv(a):
        calls.append(len(a))
        return np.linalg.inv(a)

    out, ok = training._stacked(inv, A)
    assert ok.tolist() == [p not in bad for p in range(len(A))]
    assert np.isnan(out[bad]).all()
    good = np.flatnonzero(ok)
    assert np.array_equal(out[good], np.stack([np.linalg.inv(A[p]) for p in good]))
    assert len(calls) <= 1 + 2 * len(bad) * int(np.log2(len(A)))  # one per matrix would be 257


def test_a_pixel_without_data_is_set_aside_before_the_batched_inverse(monkeypatch):
    """Normal equations with a zero diagonal entry (a term no usable star supports) are singular
    for sure: they are replaced before the stack goes to LAPACK, so it raises nothing and runs
    once; those pixels come back NaN and unusable, the others as inverted alone."""
    rng = np.random.default_rng(3)
    G = rng.normal(size=(64, 5, 5))
    A = G @ np.swapaxes(G, 1, 2) + 5 * np.eye(5)
    A[[7, 40]] = 0.0
    A[9, 2, :] = A[9, :, 2] = 0.0  # one term without support
    calls = []
    inv = np.linalg.inv
    monkeypatch.setattr(np.linalg, "inv", lambda a: calls.append(len(a)) or inv(a))
    Ainv, ok = training._inverse(A)
    assert calls == [64]
    assert ok.tolist() == [p not in (7, 9, 40) for p in range(64)] and np.isnan(Ainv[[7, 9, 40]]).all()
    assert np.array_equal(Ainv[ok], np.stack([inv(A[p]) for p in np.flatnonzero(ok)]))
    theta, logdet = training._solve(A, np.ones((64, 5)))
    assert np.isnan(theta[[7, 9, 40]]).all() and np.isnan(logdet[[7, 9, 40]]).all() and np.isfinite(theta[ok]).all()


# ----------------------------------------------------------------------------- on a GPU

gpu = pytest.mark.skipif(not gpu_available(), reason="no CuPy or no CUDA device (pip install 'cannonade[gpu]')")


@gpu
def test_fit_and_infer_on_the_gpu_agree_with_the_cpu(data):
    (lab, flux, ivar), (_, tf, ti) = data
    cpu = CannonModel(LABELS, show_progress=False).fit(lab, flux, ivar)
    gpu_m = CannonModel(LABELS, show_progress=False, device="gpu").fit(lab, flux, ivar)
    assert type(gpu_m.theta_) is np.ndarray and gpu_m.theta_.dtype == np.float64  # learned arrays on the host
    assert gpu_m.training_hash_ == cpu.training_hash_ and np.array_equal(gpu_m.pixel_ok_, cpu.pixel_ok_)
    # 1e-6 relative; near-zero entries (θ's small terms, s² at the boundary) of their column's largest
    dtheta = np.abs(gpu_m.theta_ - cpu.theta_)
    assert np.all(dtheta <= 1e-6 * (np.abs(cpu.theta_) + np.abs(cpu.theta_).max(axis=0))), dtheta.max()
    # s² is iterated to a stopping rule (fit_scatter: ~1e-3 relative in s left), and rounding can
    # stop a pixel one step earlier on one device: 1e-6 at most pixels, the rule's own
    # tolerance at the rest (an H200 run: 2 of 80 pixels differed by 1e-5 relative)
    ds2 = np.abs(gpu_m.s2_ - cpu.s2_)
    assert np.mean(ds2 <= 1e-6 * (cpu.s2_ + cpu.s2_.max())) >= 0.9
    assert np.all(ds2 <= 2e-3 * cpu.s2_ + 1e-6 * cpu.s2_.max())
    # one model, inferred on each device: labels to 1e-6 of each label's scale
    r_cpu = cpu.infer(tf, ti)
    on_gpu = copy.copy(cpu)
    on_gpu.device = "gpu"
    r_gpu = on_gpu.infer(tf, ti)
    assert np.array_equal(r_gpu.snr, r_cpu.snr, equal_nan=True)
    assert np.all(np.abs(r_gpu.labels - r_cpu.labels) <= 1e-6 * cpu.scaler_.scale_)
    # the GPU-trained model (its s² within the stopping rule): labels within 1e-3 of their formal errors
    r_gpu_m = gpu_m.infer(tf, ti)
    assert np.all(np.abs(r_gpu_m.labels - r_cpu.labels) <= 1e-3 * r_cpu.raw_errors)
    np.testing.assert_allclose(gpu_m.predict(lab[:5]), cpu.predict(lab[:5]), rtol=1e-6)
    np.testing.assert_allclose(gpu_m.pixel_chi2(lab[:5], tf[:5], ti[:5]), cpu.pixel_chi2(lab[:5], tf[:5], ti[:5]),
                               rtol=1e-5, atol=1e-9)


@gpu
def test_gpu_arrays_select_cupy_and_come_back():
    import cupy

    assert get_namespace("gpu") is cupy
    a = to_device(np.arange(4.0), "gpu")
    assert isinstance(a, cupy.ndarray) and array_namespace(np.ones(1), a) is cupy
    back = to_host(a)
    assert type(back) is np.ndarray and np.array_equal(back, np.arange(4.0))
