"""Public input validation (cannonade.cannon.checks), used by the model and by cross-validation."""

import numpy as np
import pytest

from cannonade import CannonModel, LabelError, ShapeError, TrainingSetError, cross_validate
from cannonade.cannon import checks


def test_as_label_array_accepts_arrays_and_tables():
    names = ["teff", "logg"]
    arr = np.array([[5000.0, 4.5], [4800.0, 2.5]])
    np.testing.assert_array_equal(checks.as_label_array(arr, names), arr)
    np.testing.assert_array_equal(checks.as_label_array([[5000, 4.5], [4800, 2.5]], names), arr)
    np.testing.assert_array_equal(checks.as_label_array(np.array([1.0, 2.0]), ["x"]), [[1.0], [2.0]])
    table = {"logg": arr[:, 1], "teff": arr[:, 0], "other": [0, 0]}
    np.testing.assert_array_equal(checks.as_label_array(table, names), arr)
    rec = np.rec.fromarrays([arr[:, 1], arr[:, 0]], names="logg,teff")
    np.testing.assert_array_equal(checks.as_label_array(rec, names), arr)
    from astropy.table import Table

    np.testing.assert_array_equal(checks.as_label_array(Table(table), names), arr)
    pd = pytest.importorskip("pandas")
    np.testing.assert_array_equal(checks.as_label_array(pd.DataFrame(table), names), arr)
    with pytest.raises(LabelError, match="teff"):
        checks.as_label_array({"logg": arr[:, 1]}, names)
    with pytest.raises(ShapeError, match=r"\(2, 3\)"):
        checks.as_label_array(np.zeros((2, 3)), names)


def test_check_spectra():
    f, i = checks.check_spectra(np.ones(5), np.ones(5))
    assert f.shape == i.shape == (1, 5) and f.dtype == float
    flux = np.ones((3, 5))
    f, i = checks.check_spectra(flux, np.ones((3, 5)), n_pixels=5)
    assert f is flux  # no copy when the input already is a 2-D float array
    with pytest.raises(ShapeError, match=r"\(3, 4\)"):
        checks.check_spectra(flux, np.ones((3, 4)))
    with pytest.raises(ShapeError, match="6"):
        checks.check_spectra(flux, np.ones((3, 5)), n_pixels=6)
    # float32 spectra (a store's): kept as they are for inference only, converted otherwise
    f32, i32 = np.ones((3, 5), np.float32), np.ones((3, 5), np.float32)
    f, i = checks.check_spectra(f32, i32, keep_float32=True)
    assert f is f32 and i is i32
    f, i = checks.check_spectra(f32, i32)
    assert f.dtype == i.dtype == np.float64
    f, i = checks.check_spectra(f32, np.ones((3, 5)), keep_float32=True)  # a mixed pair: float64
    assert f.dtype == i.dtype == np.float64


def test_clean_spectra_and_label_checks():
    flux = np.array([[1.0, np.nan, 1.0, np.inf], [0.5, 0.5, 0.5, 0.5]])
    ivar = np.array([[1.0, 1.0, -1.0, 1.0], [np.inf, 2.0, 0.0, np.nan]])
    f, i = checks.clean_spectra(flux, ivar)
    np.testing.assert_array_equal(i, [[1.0, 0, 0, 0], [0, 2.0, 0, 0]])
    np.testing.assert_array_equal(f, [[1.0, 0, 0, 0], [0, 0.5, 0, 0]])
    assert np.isnan(flux[0, 1])  # the inputs are not modified
    with pytest.raises(LabelError, match="'b' of star 1"):
        checks.check_finite_labels(np.array([[1.0, 2.0], [3.0, np.nan]]), ["a", "b"])
    with pytest.raises(ShapeError, match="3 rows"):
        checks.check_rows(np.zeros((3, 2)), np.zeros((4, 5)))
    with pytest.raises(TrainingSetError, match="cannot constrain 10"):
        checks.check_training_set(np.zeros((5, 3)), np.zeros((5, 7)), ["a", "b", "c"], n_terms=10)
    with pytest.raises(LabelError, match="not unique"):
        checks.check_label_names(["a", "a"])
    with pytest.raises(LabelError, match="at least one"):
        checks.check_label_names([])


def test_check_censors():
    masks = checks.check_censors({"b": [1, 0, 1]}, ["a", "b"], 3)
    assert masks["b"].dtype == bool and masks["b"].tolist() == [True, False, True]
    with pytest.raises(LabelError, match="'c'"):
        checks.check_censors({"c": [1, 0, 1]}, ["a", "b"], 3)
    with pytest.raises(ShapeError, match=r"\(3,\)"):
        checks.check_censors({"b": [1, 0]}, ["a", "b"], 3)
    assert checks.check_censors(None, ["a"], 3) == {}


def test_cross_validate_checks_its_inputs():
    rng = np.random.default_rng(0)
    lab = rng.normal(size=(40, 2))
    flux = 1.0 + 0.01 * rng.normal(size=(40, 12))
    ivar = np.full_like(flux, 1e4)
    m = CannonModel(["a", "b"], order=1, show_progress=False)
    with pytest.raises(ShapeError, match="39 rows"):
        cross_validate(m, lab[:39], flux, ivar, k=4)
    with pytest.raises(ShapeError, match=r"\(40, 11\)"):
        cross_validate(m, lab, flux, ivar[:, :11], k=4)
    with pytest.raises(LabelError, match="'b'"):
        cross_validate(m, {"a": lab[:, 0]}, flux, ivar, k=4)


def test_the_cannon_layer_imports_no_private_names():
    """checks.py, not model.py's private helpers, is what the other modules share."""
    import ast
    from pathlib import Path

    import cannonade.cannon as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cannonade"):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not private, f"{path.name} imports private {private} from {node.module}"
                allowed = ("cannonade.cannon", "cannonade.exceptions", "cannonade._version", "cannonade.util", "cannonade.tables",
                           "cannonade.flags", "cannonade.execution")
                assert node.module.startswith(allowed), f"{path.name} imports {node.module}"
