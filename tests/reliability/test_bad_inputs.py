"""Bad inputs at the public entry points end in a named error, a documented flag or a correct
result (issue 16; the table of cases is docs/reliability.md). Every test also checks that the
caller's arrays and tables are left as they were. Small synthetic data: seconds in all."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from cannonade import CannonadeError, CannonModel, Flag, cross_validate
from cannonade.cannon.crossval import kfold_indices
from cannonade.cannon.vectorizer import design_matrix, term_exponents
from cannonade.cli import main
from cannonade.exceptions import (
    CatalogueError,
    LabelError,
    ParameterError,
    SpectrumFormatError,
    TrainingSetError,
)

NAMES = ["x0", "x1", "x2"]


def universe(n=80, p=40, seed=0, snr=100.0):
    """Labels (n, 3) and spectra from an exact quadratic model (plus noise), as physical units."""
    rng = np.random.default_rng(seed)
    E = term_exponents(3, 2)
    theta = np.zeros((p, len(E)))
    theta[:, 0] = 1.0 - rng.uniform(0.0, 0.3, p)
    deg = E.sum(axis=1)
    theta[:, deg == 1] = rng.normal(0, 0.02, (p, 3))
    theta[:, deg == 2] = rng.normal(0, 0.003, (p, int((deg == 2).sum())))
    mu, sd = np.array([5000.0, 3.0, -0.2]), np.array([400.0, 1.0, 0.3])
    lab = mu + sd * rng.normal(size=(n, 3))
    flux = design_matrix((lab - mu) / sd, E) @ theta.T
    flux = flux + rng.normal(size=flux.shape) / snr
    return lab, flux, np.full(flux.shape, snr**2)


@pytest.fixture(scope="module")
def data():
    return universe()


@pytest.fixture(scope="module")
def fitted(data):
    lab, flux, ivar = data
    return CannonModel(NAMES, show_progress=False).fit(lab, flux, ivar)


def frozen(*arrays):
    """Copies to compare with after the call (inputs must never be mutated)."""
    return [np.array(a, copy=True) for a in arrays]


def assert_unchanged(arrays, copies):
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


# --------------------------------------------------------------------- fit: zero usable pixels


@pytest.mark.parametrize("scale", ["standard", "percentile", "none"])
def test_fit_names_a_constant_label(data, scale):
    lab, flux, ivar = data
    lab = lab.copy()
    lab[:, 1] = 2.5
    before = frozen(lab, flux, ivar)
    with pytest.raises(LabelError, match=r"training label 'x1' is constant \(2.5 for all 80 stars"):
        CannonModel(NAMES, scale=scale, show_progress=False).fit(lab, flux, ivar)
    assert_unchanged((lab, flux, ivar), before)


def test_fit_names_collinear_labels(data):
    lab, flux, ivar = data
    lab = lab.copy()
    lab[:, 2] = 0.001 * lab[:, 0] - 5.2  # [Fe/H] a linear function of Teff
    with pytest.raises(LabelError, match=r"training labels \['x0', 'x2'\] are collinear"):
        CannonModel(NAMES, show_progress=False).fit(lab, flux, ivar)


def test_fit_names_collinear_model_terms(data):
    """A label that is a function of another (x2 = x0²) makes terms of a quadratic model dependent."""
    lab, flux, ivar = data
    lab = lab.copy()
    lab[:, 2] = (lab[:, 0] / 1000.0) ** 2
    with pytest.raises(TrainingSetError, match=r"the fit left no pixel the model can use .*terms \[.*\] are linearly "
                                               r"dependent") as info:
        CannonModel(NAMES, show_progress=False).fit(lab, flux, ivar)
    named = str(info.value).split("terms ")[1].split("]")[0]
    assert "'x0^2'" in named and "'x2'" in named and "'x1'" not in named
    CannonModel(NAMES, order=1, show_progress=False).fit(lab, flux, ivar)  # linear: no dependent terms


@pytest.mark.parametrize("case", ["all zero", "too few stars per pixel", "nan flux"])
def test_fit_without_usable_pixels_says_why(data, case):
    lab, flux, ivar = data
    flux, ivar = flux.copy(), ivar.copy()
    if case == "all zero":
        ivar[:] = 0.0
    elif case == "too few stars per pixel":
        ivar[9:] = 0.0  # 9 stars have data; the quadratic model in 3 labels has 10 terms
    else:
        flux[:] = np.nan
    before = frozen(flux, ivar)
    with pytest.raises(TrainingSetError, match=r"no pixel has data \(finite flux, ivar > 0\) in >= 10 training stars"):
        CannonModel(NAMES, show_progress=False).fit(lab, flux, ivar)
    assert_unchanged((flux, ivar), before)


# --------------------------------------------------------------------- masked table cells


def _masked_tables(lab):
    t = Table([MaskedColumn(lab[:, i], name=n) for i, n in enumerate(NAMES)], masked=True)
    t["x1"].mask[13] = True  # the value under the mask (here a real number) must never be used
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({n: pd.array(lab[:, i], dtype="Float64") for i, n in enumerate(NAMES)})
    df.loc[13, "x1"] = pd.NA
    sentinel = Table(lab, names=NAMES)
    sentinel["x1"][13] = -9999.0
    return {"astropy masked": t, "pandas NA": df, "survey sentinel": sentinel}


@pytest.mark.parametrize("kind", ["astropy masked", "pandas NA", "survey sentinel"])
def test_masked_label_cell_is_missing_never_a_number(data, kind):
    lab, flux, ivar = data
    table = _masked_tables(lab)[kind]
    snapshot = Table(table, copy=True) if isinstance(table, Table) else table.copy()
    with pytest.raises(LabelError, match=r"training label 'x1' of star 13 is nan"):
        CannonModel(NAMES, show_progress=False).fit(table, flux, ivar)
    m = CannonModel(NAMES, show_progress=False).fit(table, flux, ivar, missing="impute")
    assert m.imputed_[13].tolist() == [False, True, False] and m.imputed_.sum() == 1
    assert np.isfinite(m.imputed_values_[13, 1])
    if isinstance(table, Table):
        assert all(np.array_equal(np.asarray(table[n]), np.asarray(snapshot[n])) for n in NAMES)
    else:
        assert table.equals(snapshot)


def test_masked_numpy_array_label_is_missing(data):
    lab, flux, ivar = data
    masked = np.ma.masked_array(lab, mask=np.zeros(lab.shape, bool))
    masked.mask[21, 0] = True
    with pytest.raises(LabelError, match=r"'x0' of star 21"):
        CannonModel(NAMES, show_progress=False).fit(masked, flux, ivar)


# --------------------------------------------------------------------- parameters


@pytest.mark.parametrize("kwargs, match", [
    (dict(regularization=-1.0), "regularization must be finite and >= 0, got -1.0"),
    (dict(regularization=np.nan), "regularization must be finite and >= 0, got nan"),
    (dict(regularization=[0.1, -0.2]), r"regularization must be finite and >= 0, got -0.2 at pixel 1"),
    (dict(order=0), "order must be an integer >= 1, got 0"),
    (dict(order=2.5), "order must be an integer >= 1, got 2.5"),
    (dict(scatter="mle"), r"scatter must be one of \['reml', 'ml'\], got 'mle'"),
    (dict(scale="minmax"), "scale must be one of"),
    (dict(pixel_chunk=0), "pixel_chunk must be an integer >= 1 or None, got 0"),
    (dict(star_chunk=-64), "star_chunk must be an integer >= 1 or None, got -64"),
    (dict(terms=[[0, 0, 0], [-1, 0, 0]]), "term exponents must be non-negative"),
])
def test_model_parameters_are_checked_at_construction(kwargs, match):
    with pytest.raises(ParameterError, match=match) as info:
        CannonModel(NAMES, **kwargs)
    assert isinstance(info.value, ValueError)  # compatible with the ValueError raised before


def test_parameters_set_after_construction_are_checked_by_fit(data):
    lab, flux, ivar = data
    m = CannonModel(NAMES, show_progress=False)
    m.regularization = -0.5
    with pytest.raises(ParameterError, match="regularization must be finite and >= 0, got -0.5"):
        m.fit(lab, flux, ivar)
    m.regularization = np.full(39, 0.1)
    with pytest.raises(ParameterError, match=r"regularization has shape \(39,\); expected a number or \(40,\)"):
        m.fit(lab, flux, ivar)


@pytest.mark.parametrize("call, match", [
    (lambda m, d: cross_validate(m, *d, k=1), r"k \(the number of cross-validation folds\) must be an integer >= 2, got 1"),
    (lambda m, d: cross_validate(m, *d, k=2.5), "must be an integer >= 2, got 2.5"),
    (lambda m, d: cross_validate(m, *d, missing="drop"), "missing must be 'refuse' or 'impute', got 'drop'"),
    (lambda m, d: m.fit(*d, missing=None), "missing must be 'refuse' or 'impute', got None"),
    (lambda m, d: m.fit(*d, s2=-1.0), "fixed s2 must be finite and non-negative; pixel 0 has -1.0"),
    (lambda m, d: m.infer(d[1], d[2], max_iter=0), "max_iter must be an integer >= 1, got 0"),
])
def test_function_parameters_raise_parameter_error(fitted, data, call, match):
    with pytest.raises(ParameterError, match=match):
        call(fitted, data)


def test_other_deliberate_checks_are_named_errors(fitted, tmp_path):
    from cannonade.cannon.training import fit_scatter
    from cannonade.galaxy.crossmatch import best_match

    with pytest.raises(ParameterError, match=r"model files are \.npz"):
        fitted.save(tmp_path / "model.txt")
    with pytest.raises(ParameterError, match="scatter method must be 'reml' or 'ml', got 'x'"):
        fit_scatter(np.ones((5, 1)), np.ones((5, 2)), np.ones((5, 2)), method="x")
    with pytest.raises(ParameterError, match="prefer must be 'min' or 'max'"):
        best_match([1.0], [1.0], [1.0], [1.0], prefer="nearest")


# --------------------------------------------------------------------- absurd spectra


ABSURD = {
    "flux x 1e30": lambda f: f * 1e30,
    "flux x -1e30": lambda f: f * -1e30,
    "flux x 1e20": lambda f: f * 1e20,
    "flux x 1e12": lambda f: f * 1e12,
    "flux 1 + 1e30 noise": lambda f: 1.0 + 1e30 * np.random.default_rng(1).normal(size=f.shape),  # was quiet
    "one pixel 1e30": lambda f: np.r_[f[:5], 1e30, f[6:]],
    "flux constant 1e15": lambda f: np.full_like(f, 1e15),
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_flux_is_never_a_quiet_converged_answer(fitted, data, case):
    """Before: χ²'s constant part (Σ w f² ~ 1e60) rounded every step away and the tolerance
    (1e-9 χ²) was 1e51, so the minimiser stopped at its start, converged=True — for
    "1 + 1e30 noise" at plausible labels with no flag at all."""
    lab, flux, ivar = data
    test_flux, test_ivar = flux[:6].copy(), ivar[:6].copy()
    test_flux[2] = ABSURD[case](test_flux[2])
    before = frozen(test_flux, test_ivar)
    r = fitted.infer(test_flux, test_ivar)
    assert_unchanged((test_flux, test_ivar), before)
    serious = int(Flag.NOT_CONVERGED | Flag.OUTSIDE_TRAINING | Flag.NO_DATA | Flag.HIGH_CHI2)
    assert r.flags[2] & serious, f"{case} came back unflagged: {r.labels[2]}, converged={r.converged[2]}"
    assert not (r.converged[2] and np.all(np.abs(r.labels[2] - lab.mean(axis=0)) < 5 * lab.std(axis=0)))
    assert not (r.converged[2] and r.n_iter[2] <= 3)  # minimised, not stopped at its start
    # every other star: what it gets on its own (to the minimiser's tolerance: the batch's
    # phases depend on how many starts are still live, so not to the last bit)
    alone = fitted.infer(np.delete(test_flux, 2, axis=0), np.delete(test_ivar, 2, axis=0))
    diff = np.abs(np.delete(r.labels, 2, axis=0) - alone.labels)
    assert np.all(diff < 0.01 * alone.raw_errors)
    np.testing.assert_array_equal(np.delete(r.flags, 2), alone.flags)
    np.testing.assert_array_equal(np.delete(r.converged, 2), alone.converged)


def test_huge_ivar_gives_the_right_labels(fitted, data):
    """ivar 1e30 is bounded by the model scatter (w = ivar / (1 + ivar s²)): a correct result."""
    lab, flux, ivar = data
    r = fitted.infer(flux[:4], ivar[:4] * 1e26)
    ref = fitted.infer(flux[:4], ivar[:4])
    assert r.converged.all()
    assert np.all(np.abs(r.labels - ref.labels) < 0.5 * lab.std(axis=0))


# --------------------------------------------------------------------- FITS wavelength solutions


def _write_galah(path, crval=4715.0, cdelt=0.046):
    n = 300
    h = fits.Header()
    h["CRVAL1"], h["CDELT1"], h["CRPIX1"] = crval, cdelt, 1.0
    flux = np.full(n, 1000.0)
    fits.HDUList([fits.PrimaryHDU(flux, h), fits.ImageHDU(flux / 1000.0, name="normalized"),
                  fits.ImageHDU(np.full(n, 0.01), name="relative_error")]).writeto(path)


def _write_lamost_image(path, coeff1=1e-4):
    n = 200
    data = np.stack([np.ones(n), np.ones(n), np.ones(n), np.zeros(n), np.zeros(n)]).astype(np.float32)
    h = fits.Header()
    h["COEFF0"], h["COEFF1"], h["RA"], h["DEC"] = 3.5682, coeff1, 10.0, 20.0
    fits.PrimaryHDU(data, h).writeto(path)


def _write_lamost_table(path, wave):
    n = wave.size
    cols = [fits.Column(name=name, format=f"{n}D", array=arr[None, :])
            for name, arr in (("FLUX", np.ones(n)), ("IVAR", np.ones(n)), ("WAVELENGTH", wave))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(path)


@pytest.mark.parametrize("case, writer, key", [
    ("galah CDELT1 = 0", lambda p: _write_galah(p, cdelt=0.0), "CDELT1"),
    ("galah CDELT1 < 0", lambda p: _write_galah(p, cdelt=-0.046), "CDELT1"),
    ("lamost COEFF1 = 0", lambda p: _write_lamost_image(p, coeff1=0.0), "COEFF1"),
    ("lamost constant WAVELENGTH", lambda p: _write_lamost_table(p, np.full(200, 5000.0)), "WAVELENGTH"),
    ("lamost WAVELENGTH with a NaN", lambda p: _write_lamost_table(p, np.r_[np.linspace(4000, 5000, 199), np.nan]),
     "WAVELENGTH"),
])
def test_a_wavelength_solution_that_does_not_increase_is_refused(tmp_path, case, writer, key):
    from cannonade.io import read_spectrum

    path = tmp_path / "spectrum.fits"
    writer(path)
    with pytest.raises(SpectrumFormatError) as info:
        read_spectrum(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_good_wavelength_solutions_still_read(tmp_path):
    from cannonade.io import read_spectrum

    _write_galah(tmp_path / "g.fits")
    _write_lamost_image(tmp_path / "l.fits")
    _write_lamost_table(tmp_path / "t.fits", np.linspace(5000, 4000, 200))  # decreasing: sorted by the reader
    for name in ("g.fits", "l.fits", "t.fits"):
        assert np.all(np.diff(read_spectrum(tmp_path / name).wavelength) > 0)


# --------------------------------------------------------------------- distances


def _stars():
    return Table(dict(ra=[10.0, 150.0, 250.0, 300.0], dec=[20.0, -30.0, 5.0, 60.0], distance=[1.0, 2.0, 0.5, 3.0],
                      distance_err=[0.1, 0.2, 0.05, 0.3], pmra=[5.0, -3.0, 1.0, 2.0], pmdec=[-3.0, 2.0, 4.0, -1.0],
                      radial_velocity=[10.0, -40.0, 25.0, 5.0], radial_velocity_err=[1.0, 1.0, 1.0, 1.0]))


@pytest.mark.parametrize("bad", [-2.0, np.inf, 1.0 / -0.5, -1e-3])
def test_a_negative_or_infinite_distance_is_missing_not_mirrored(bad, caplog):
    from cannonade.dynamics import orbits

    t = _stars()
    t["distance"][1] = bad
    before = Table(t, copy=True)
    missing = _stars()
    missing["distance"][1] = np.nan  # the documented meaning: a missing distance
    with caplog.at_level(logging.WARNING, logger="cannonade.galaxy.dynamics"):
        o = orbits(t, n_samples=5, seed=1, show_progress=False)
    ref = orbits(missing, n_samples=5, seed=1, show_progress=False)
    assert all(np.array_equal(t[c], before[c]) for c in t.colnames)
    for c in ("R", "z", "vT", "JR", "Jphi", "Jz", "e_JR", "e_R"):
        assert np.isnan(o[c][1]), c
        np.testing.assert_array_equal(np.delete(np.asarray(o[c]), 1), np.delete(np.asarray(ref[c]), 1))
    assert "rows [1]" in caplog.text


def test_a_distance_column_in_parsecs_is_refused():
    from cannonade.dynamics import orbits
    from cannonade.galaxy.dynamics import galactocentric

    t = _stars()
    t["distance"] = t["distance"] * 1000.0
    for call in (lambda: orbits(t, n_samples=0, show_progress=False), lambda: galactocentric(t)):
        with pytest.raises(CatalogueError, match=r"column 'distance' has a median of 1500 but is read in kpc.*parsecs"):
            call()
    t["distance"].unit = "pc"  # with its unit it is converted and fine
    assert np.isfinite(orbits(t, n_samples=0, show_progress=False)["JR"]).all()


@pytest.mark.parametrize("kwargs, match", [(dict(chunk_size=0), "chunk_size must be an integer >= 1, got 0"),
                                           (dict(n_samples=-3), "n_samples must be an integer >= 0, got -3")])
def test_orbits_parameters(kwargs, match):
    from cannonade.dynamics import orbits

    with pytest.raises(ParameterError, match=match):
        orbits(_stars(), show_progress=False, **kwargs)


# --------------------------------------------------------------------- cross-validation


def test_cross_validation_names_the_callers_star(data):
    lab, flux, ivar = data
    lab = lab.copy()
    lab[37, 1] = np.nan
    fold = kfold_indices(len(lab), 4, seed=0)
    first = 0 if fold[37] != 0 else 1  # the first fold that trains on star 37: there it is row ...
    assert np.sum(fold[:37] != first) != 37  # ... not 37 (the number the message must give)
    before = frozen(lab, flux, ivar)
    with pytest.raises(LabelError, match=r"training label 'x1' of star 37 is nan"):
        cross_validate(CannonModel(NAMES, show_progress=False), lab, flux, ivar, k=4)
    assert_unchanged((lab, flux, ivar), before)


def test_a_problem_of_one_fold_names_the_fold(data):
    """x1 varies only among the stars of fold 0: the model trained without them cannot use it."""
    lab, flux, ivar = data
    lab = lab.copy()
    fold = kfold_indices(len(lab), 4, seed=0)
    lab[fold != 0, 1] = 3.0
    with pytest.raises(LabelError, match=r"cross-validation fold 0 of 4 \(trained on the 60 stars outside it\): "
                                         r"training label 'x1' is constant"):
        cross_validate(CannonModel(NAMES, show_progress=False), lab, flux, ivar, k=4)


# --------------------------------------------------------------------- the CLI


def test_cli_turns_a_bad_training_set_into_one_line(tmp_path, capsys):
    from cannonade.spectra.store import write_store

    lab, flux, ivar = universe(n=60, p=30, seed=4)
    ids = np.array([f"s{i}" for i in range(len(lab))])
    meta = {"obj_id": ids, "survey": np.array(["lamost"] * len(ids)), "snr": np.full(len(ids), 100.0),
            "ra": np.linspace(10, 20, len(ids)), "dec": np.full(len(ids), 5.0)}
    write_store(tmp_path / "s.h5", np.linspace(4000, 5000, 30), flux, ivar, meta,
                {"grid": "custom", "normalise": "gaussian", "norm_kwargs": "{}"})
    t = Table({"star": ids, "x0": lab[:, 0], "x1": np.full(len(ids), 2.5), "x2": lab[:, 2]})
    t.write(tmp_path / "labels.csv", format="ascii.csv")
    args = [str(tmp_path / "labels.csv"), str(tmp_path / "s.h5"), "--labels", "x0,x1,x2", "--out"]
    assert main(["train", *args, str(tmp_path / "m.npz"), "--no-calibrate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "training label 'x1' is constant" in err and "Traceback" not in err
    assert main(["cv", *args, str(tmp_path / "cv"), "--k", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "k must be" in err and ">= 2, got 1" in err


def test_every_error_here_is_a_cannonade_error():
    for cls in (CatalogueError, LabelError, ParameterError, SpectrumFormatError, TrainingSetError):
        assert issubclass(cls, CannonadeError)


# --------------------------------------------------------------------- named errors for the last two gaps


def test_saving_over_an_existing_model_names_the_file(fitted, tmp_path):
    """save(overwrite=False) on an existing file: OutputExistsError (a CannonadeError and still a
    FileExistsError), naming the file, which is left byte for byte as it was."""
    from cannonade.exceptions import OutputError, OutputExistsError

    path = tmp_path / "model.npz"
    fitted.save(path)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match=rf"model file {path} exists \(pass overwrite=True") as info:
        fitted.save(path, overwrite=False)
    assert isinstance(info.value, CannonadeError) and isinstance(info.value, FileExistsError)
    assert path.read_bytes() == before
    try:  # what callers wrote before still catches it
        fitted.save(path, overwrite=False)
    except FileExistsError:
        pass
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(OutputError, match=r"folder\.npz is a directory"):
        fitted.save(tmp_path / "folder.npz")


def test_unregistering_an_unknown_reader_names_it_and_the_registered_ones():
    from cannonade.exceptions import UnknownReaderError
    from cannonade.spectra import readers

    names = [ld.name for ld in readers.registered_readers()]
    with pytest.raises(UnknownReaderError) as info:
        readers.unregister_reader("lamots")
    message = str(info.value)
    assert isinstance(info.value, CannonadeError) and isinstance(info.value, KeyError)
    assert "'lamots'" in message and "did you mean 'lamost'" in message and all(repr(n) in message for n in names)
    assert not message.startswith('"')  # readable, not KeyError's quoted repr
    assert [ld.name for ld in readers.registered_readers()] == names


def test_a_duplicated_id_in_the_labels_table_is_counted_and_skipped_never_averaged():
    """A star listed twice in a labels table: its first row is the training star, the repeat is
    skipped and counted (``n_duplicate_ids``, in the summary); every other star is as without it."""
    from astropy.table import Table

    from cannonade.tasks.training import join_labels

    store_ids = np.array(["a", "b", "c", "d"])
    snr = np.array([50.0, 60.0, 70.0, 80.0])
    t = Table({"obj_id": ["a", "b", "b", "c"], "teff": [5000.0, 5100.0, 9999.0, 5200.0], "logg": [4.0, 4.1, 0.5, 4.2]})
    ts = join_labels(t, store_ids, snr, ["teff", "logg"], id_column="obj_id")
    clean = join_labels(t[[0, 1, 3]], store_ids, snr, ["teff", "logg"], id_column="obj_id")
    assert ts.counts["n_duplicate_ids"] == 1 and "1 duplicate ids skipped" in ts.summary()
    np.testing.assert_array_equal(ts.labels, clean.labels)
    assert 9999.0 not in ts.labels[:, 0]
    assert t["teff"][2] == 9999.0  # the input table is not modified
