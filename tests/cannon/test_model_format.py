"""The model file format is pinned: a file written by earlier code still loads and predicts the same.

``data/model_format1.npz`` was written by the code of commit fa37c9a (before the cannon/
package was split; see ``data/make_model_format1.py``); ``data/model_format1_check.npz``
holds what that code predicted and inferred with it.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from cannonade import CannonModel

DATA = Path(__file__).resolve().parent / "data"
FORMAT1 = DATA / "model_format1.npz"


@pytest.fixture(scope="module")
def check():
    with np.load(DATA / "model_format1_check.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_format1_file_loads_and_predicts_as_written(check):
    m = CannonModel.load(FORMAT1)
    assert m.label_names == ["teff", "logg", "fe_h"] and m.order == 2 and m.n_terms == 10
    assert m.theta_.shape == (48, 10) and m.s2_.shape == (48,) and m.pixel_ok_.all()
    assert m.training_hash_ == "00916dbc81878efb100e8ecc3ba2c34f6b79cca5261be44ccbb6b581051bff3b"
    assert m.n_train_ == 120 and m.scatter == "reml" and m.scale == "standard" and m.regularization == 0.0
    np.testing.assert_array_equal(m.censors["fe_h"], np.arange(48) % 3 == 0)
    np.testing.assert_allclose(m.wavelength, np.linspace(5000.0, 5047.0, 48))
    np.testing.assert_allclose(m.predict(check["labels"]), check["predict"], rtol=1e-12, atol=1e-14)
    # two literal values, in case both data files were ever regenerated together
    assert m.predict(check["labels"])[1, 7] == pytest.approx(0.9265473946745254, rel=1e-12)
    assert check["predict"].sum() == pytest.approx(165.60154822789465, rel=1e-12)
    # censored terms are exactly 0 where fe_h may not act
    uses = m.exponents[:, 2] > 0
    assert np.all(m.theta_[~m.censors["fe_h"]][:, uses] == 0.0)


def test_format1_file_infers_as_written(check):
    m = CannonModel.load(FORMAT1)
    r = m.infer(check["flux"], check["ivar"])
    err = np.sqrt(np.diagonal(check["infer_cov"], axis1=1, axis2=2))
    assert r.converged.all()
    # the float32 reduction may round differently on another BLAS: far below the label errors
    assert np.all(np.abs(r.labels - check["infer_labels"]) < 1e-4 * err)
    np.testing.assert_allclose(r.raw_errors, err, rtol=1e-4)
    np.testing.assert_allclose(r.chi2, check["infer_chi2"], rtol=1e-4)


def test_format1_file_round_trips_unchanged(tmp_path):
    """Saving what was loaded writes the same arrays and the same metadata (the format did not move)."""
    out = CannonModel.load(FORMAT1).save(tmp_path / "again.npz")
    with np.load(FORMAT1, allow_pickle=False) as a, np.load(out, allow_pickle=False) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            if k != "metadata":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
                assert a[k].dtype == b[k].dtype, k
        meta_a, meta_b = json.loads(str(a["metadata"])), json.loads(str(b["metadata"]))
    assert meta_a == meta_b
    assert meta_b["format"] == "cannonade-model" and meta_b["format_version"] == 1


def test_persistence_functions_are_what_the_methods_call(tmp_path):
    from cannonade.cannon import persistence

    assert persistence.MODEL_FORMAT == "cannonade-model" and persistence.MODEL_FORMAT_VERSION == 1
    m = persistence.load_model(FORMAT1, CannonModel)
    assert isinstance(m, CannonModel)
    path = persistence.save_model(m, tmp_path / "p.npz")
    m2 = CannonModel.load(path)
    np.testing.assert_array_equal(m2.theta_, m.theta_)
    with pytest.raises(FileExistsError):
        persistence.save_model(m, path, overwrite=False)
    with pytest.raises(ValueError, match=r"\.npz"):
        m.save(tmp_path / "model.fits")


def test_training_hash_is_unchanged():
    """The training-set SHA-256 written into model files: same data, same hash as before the split."""
    N, P = 40, 37
    i, p = np.arange(N)[:, None], np.arange(P)[None, :]
    lab = np.column_stack([4000.0 + 25.0 * np.arange(N), 1.0 + (np.arange(N) % 9) / 4.0])
    flux = 1.0 - ((i * 7 + p * 3) % 11) / 64.0
    ivar = np.full((N, P), 2500.0)
    ivar[(i + p) % 13 == 0] = 0.0
    flux[(i * p) % 17 == 5] = np.nan
    expect = {
        None: "b2f2e36a45b3e69ae574a288eeae02e75e1c8eb7a990147798bbb89669b11513",
        16: "9690b58cb9b72f7ac5594f34a11c0a34e4067419afa22f8db407d7affc3ca4a2",
    }
    for chunk, digest in expect.items():
        m = CannonModel(["teff", "logg"], order=2, pixel_chunk=chunk, show_progress=False).fit(lab, flux, ivar)
        assert m.training_hash_ == digest


def test_a_corrupt_file_is_closed_after_the_error(tmp_path):
    """Reading a truncated model file raises ModelFileError and leaves no file handle open."""
    import gc
    import warnings

    from cannonade import ModelFileError

    data = FORMAT1.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            CannonModel.load(trunc)
        except ModelFileError as exc:
            assert "truncated or corrupt" in str(exc) and "trunc.npz" in str(exc)
        else:
            raise AssertionError("a truncated file loaded")
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


def test_a_single_array_file_is_a_model_file_error(tmp_path):
    from cannonade import ModelFileError

    single = tmp_path / "single.npz"
    with open(single, "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(ModelFileError, match="single array"):
        CannonModel.load(single)
