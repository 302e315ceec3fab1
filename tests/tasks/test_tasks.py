"""The user's commands on their own store: train / cv / infer / match / config init, the
grid and normalisation guard, provenance, resume. Small synthetic stores (seconds)."""


import numpy as np
import pytest
from astropy.table import Table

from cannonade.cannon.model import CannonModel
from cannonade.cannon.spectral_setup import SpectraMismatchWarning
from cannonade.cli import main
from cannonade.exceptions import ColumnError, ConfigError, SpectraMismatchError, TrainingSetError
from cannonade.execution import StopRequested
from cannonade.spectra.store import SpectraStore, write_store
from cannonade.tasks.infer import infer_store
from cannonade.tasks.train import train_model
from cannonade.tasks.training import join_labels

LABELS = ["teff", "logg", "fe_h"]
P = 120


def spectra(labels, rng, snr=100.0):
    """Quadratic mock spectra of (teff, logg, fe_h): (N, P) flux and ivar."""
    x = (labels - [5000.0, 3.0, -0.2]) / [500.0, 1.0, 0.3]
    pix = np.linspace(0, 1, P)
    a, b, c = np.sin(7 * pix), np.cos(5 * pix), np.sin(3 * pix + 1)
    flux = 1 - 0.05 * (1 + a * x[:, :1] + b * x[:, 1:2] + c * x[:, 2:3] + 0.3 * a * b * x[:, :1] * x[:, 2:3] + 0.2 * c * x[:, 1:2] ** 2)
    flux = flux + rng.normal(0, 1 / snr, flux.shape)
    return flux, np.full(flux.shape, snr**2)


def draw_labels(n, rng):
    return np.column_stack([rng.uniform(4500, 5500, n), rng.uniform(2, 4, n), rng.uniform(-0.7, 0.3, n)])


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A store of 400 spectra (ids s0..s399; s0..s9 observed twice) and a labels table of 250 of them."""
    d = tmp_path_factory.mktemp("survey")
    rng = np.random.default_rng(3)
    lab = draw_labels(400, rng)
    rows = np.r_[np.arange(400), np.arange(10)]  # repeat visits of the first 10 stars
    flux, ivar = spectra(lab[rows], rng)
    ids = np.array([f"s{i}" for i in rows])
    wl = np.linspace(4000, 5000, P)
    meta = {"obj_id": ids, "survey": np.array(["lamost"] * len(rows)), "snr": np.full(len(rows), 100.0),
            "ra": np.linspace(10, 20, len(rows)), "dec": np.full(len(rows), 5.0)}
    attrs = {"grid": "custom", "normalise": "gaussian", "norm_kwargs": "{}"}
    write_store(d / "survey.h5", wl, flux, ivar, meta, attrs)
    # the same spectra on a grid 420 A off, and normalised another way
    write_store(d / "shifted.h5", wl + 420, flux, ivar, meta, attrs)
    write_store(d / "cheb.h5", wl, flux, ivar, meta, dict(attrs, normalise="chebyshev"))
    t = Table({"star": ids[:250], "teff": lab[:250, 0], "logg": lab[:250, 1], "fe_h": lab[:250, 2],
               "e_teff": np.full(250, 50.0), "e_logg": np.full(250, 0.1), "e_fe_h": np.full(250, 0.05)})
    t["fe_h"][5] = np.nan  # a star with a missing label
    t.add_row(["nowhere", 5000.0, 3.0, 0.0, 50.0, 0.1, 0.05])  # a star without a spectrum
    t.write(d / "labels.csv", format="ascii.csv")
    return d, lab, ids


@pytest.fixture(scope="module")
def model_path(survey):
    d, _, _ = survey
    report = train_model(d / "labels.csv", d / "survey.h5", LABELS, d / "giant.npz", k=4)
    return d / "giant.npz", report


def test_train_reports_the_join_and_records_the_setup(model_path):
    path, report = model_path
    c = report.training.counts
    assert (c["n_table"], c["n_matched"], c["n_unmatched"], c["n_bad_labels"]) == (251, 249, 1, 1)
    assert c["n_with_repeats"] == 9  # s0..s9 have two spectra each, s5 lacks a label
    assert report.training.id_column == "star"  # guessed from the values
    m = CannonModel.load(path)
    assert m.name == "giant" and m.calibration_ is not None
    assert m.spectral_setup_.normalise == "gaussian" and m.spectral_setup_.survey == "lamost"
    assert m.spectral_setup_.wavelength[0] == pytest.approx(4000.0)
    assert m.provenance_["recipe"] == "cannonade train" and m.provenance_["version"]
    assert "249 of 251" in report.summary()


def test_train_imputes_missing_labels_when_asked(survey, tmp_path):
    d, _, _ = survey
    report = train_model(d / "labels.csv", d / "survey.h5", LABELS, tmp_path / "imp.npz", missing="impute", calibrate=False)
    assert report.training.counts["n_matched"] == 250  # the star without [Fe/H] is kept
    assert report.model.imputed_.sum() == 1 and np.isfinite(report.model.imputed_values_[report.model.imputed_]).all()
    assert main(["train", str(d / "labels.csv"), str(d / "survey.h5"), "--labels", "teff,logg,fe_h", "--missing-labels",
                 "impute", "--no-calibrate", "--out", str(tmp_path / "imp2.npz")]) == 0


def test_join_labels_errors_name_the_column(survey):
    t = Table({"obj_id": ["a", "b"], "teff": [1.0, 2.0]})
    with pytest.raises(ColumnError, match="logg"):
        join_labels(t, np.array(["a"]), np.array([1.0]), ["teff", "logg"])
    with pytest.raises(TrainingSetError, match="--id-column"):
        join_labels(Table({"x": [1.5, 2.5], "teff": [1.0, 2.0]}), np.array(["a"]), np.array([1.0]), ["teff"])


def test_infer_one_row_per_spectrum_in_store_order(survey, model_path, tmp_path):
    d, lab, ids = survey
    out = tmp_path / "labels.parquet"
    report = infer_store([model_path[0]], d / "survey.h5", out)
    t = Table.read(out)
    assert list(t["obj_id"]) == list(ids) and list(t["store_row"]) == list(range(len(ids)))
    for name in LABELS:
        for c in (name, f"e_{name}", f"raw_e_{name}", f"{name}_extrap"):
            assert c in t.colnames
    assert {"flags", "chi2", "dof", "snr", "model"} <= set(t.colnames)
    assert set(t["model"]) == {"giant"} and report.n_spectra == len(ids)
    # the labels are right: held-out stars (rows 250..399) within 3 sigma of the truth mostly
    held = slice(250, 400)
    z = (np.asarray(t["teff"])[held] - lab[250:400, 0]) / np.asarray(t["e_teff"])[held]
    assert np.mean(np.abs(z) < 3) > 0.9
    assert np.all(np.asarray(t["dof"]) == P - 3)
    # provenance in the Parquet metadata
    import pyarrow.parquet as pq

    raw = pq.read_schema(out).metadata
    text = b" ".join(raw.values()).decode()
    assert "cannonade infer" in text and model_path[1].model.training_hash_ in text


def test_streamed_parquet_labels_equal_the_one_table_fits(survey, model_path, tmp_path, monkeypatch):
    """A Parquet label table is written a few parts at a time (the process holds those rows, not
    the survey's); it equals the FITS table written from one table: every column, unit, the store
    rows in order; the report's counts are those of the table."""
    from cannonade.catalogue import read_catalogue
    from cannonade.tasks import infer

    monkeypatch.setattr(infer, "WRITE_ROWS", 150)  # parts of 90 rows: writes of 180, 180 and 40 rows
    d, lab, ids = survey
    store = d / "survey.h5"
    rep_p = infer_store([model_path[0]], store, tmp_path / "s.parquet", chunk_size=90)  # 5 parts, the last short
    rep_f = infer_store([model_path[0]], store, tmp_path / "s.fits", chunk_size=90)
    a, b = read_catalogue(tmp_path / "s.parquet"), read_catalogue(tmp_path / "s.fits")
    assert a.colnames == b.colnames and len(a) == len(b) == len(ids)
    assert list(a["store_row"]) == list(range(len(ids))) and list(a["obj_id"]) == list(ids)
    for c in a.colnames:
        assert a[c].unit == b[c].unit, c
        x, y = np.asarray(a[c]), np.asarray(b[c])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), c
    assert rep_p.n_flag_free == rep_f.n_flag_free == int(np.sum(np.asarray(a["flags"]) == 0))
    assert rep_p.counts == rep_f.counts == {"giant": len(ids)}


def test_infer_refuses_another_grid_or_normalisation(survey, model_path, tmp_path):
    d, _, _ = survey
    with pytest.raises(SpectraMismatchError, match="wavelength grid") as e:
        infer_store([model_path[0]], d / "shifted.h5", tmp_path / "x.parquet")
    assert "4000.00-5000.00" in str(e.value) and "4420.00-5420.00" in str(e.value)
    with pytest.raises(SpectraMismatchError, match="continuum normalisation.*chebyshev"):
        infer_store([model_path[0]], d / "cheb.h5", tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()
    # the CLI: exit 2, one line naming the difference
    rc = main(["infer", str(model_path[0]), str(d / "shifted.h5"), "--out", str(tmp_path / "x.parquet")])
    assert rc == 2
    # the override works, with a warning
    with pytest.warns(SpectraMismatchWarning, match="chebyshev"):
        infer_store([model_path[0]], d / "cheb.h5", tmp_path / "x.parquet", allow_mismatch=True)
    assert len(Table.read(tmp_path / "x.parquet")) == 410


def test_infer_cli_mismatch_message(survey, model_path, tmp_path, capsys):
    d, _, _ = survey
    assert main(["infer", str(model_path[0]), str(d / "cheb.h5"), "--out", str(tmp_path / "y.fits")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "continuum normalisation" in err[0] and "--allow-mismatch" in err[0]
    assert main(["infer", str(model_path[0]), str(d / "cheb.h5"), "--out", str(tmp_path / "y.fits"), "--allow-mismatch"]) == 0


def test_infer_resumes_after_a_stop(survey, model_path, tmp_path):
    d, _, _ = survey
    full = tmp_path / "full.fits"
    infer_store([model_path[0]], d / "survey.h5", full, chunk_size=100)
    out = tmp_path / "part.fits"
    done = []
    with pytest.raises(StopRequested):
        infer_store([model_path[0]], d / "survey.h5", out, chunk_size=100, stop_after=2, on_done=lambda k, r: done.append(k))
    assert len(done) == 2 and not out.exists()
    report = infer_store([model_path[0]], d / "survey.h5", out, chunk_size=100, on_done=lambda k, r: done.append(k))
    assert report.resumed_chunks == 2 and sorted(done) == list(range(5))  # each chunk ran once
    a, b = Table.read(full), Table.read(out)
    assert np.array_equal(np.asarray(a["teff"]), np.asarray(b["teff"]), equal_nan=True)


def test_infer_two_models_lowest_chi2(survey, model_path, tmp_path):
    d, _, _ = survey
    # a second model trained on a subset with shuffled labels: each spectrum gets whichever fits better
    t = Table.read(d / "labels.csv")[:120]
    rng = np.random.default_rng(0)
    t["teff"] = rng.permutation(np.asarray(t["teff"]))
    t.write(tmp_path / "shuffled.csv", format="ascii.csv")
    train_model(tmp_path / "shuffled.csv", d / "survey.h5", LABELS, tmp_path / "dwarf.npz", calibrate=False)
    store = d / "survey.h5"
    infer_store([model_path[0], tmp_path / "dwarf.npz"], store, tmp_path / "two.parquet", model_by="chi2")
    infer_store([model_path[0]], store, tmp_path / "g.parquet")
    with pytest.warns(UserWarning, match="not calibrated"):
        infer_store([tmp_path / "dwarf.npz"], store, tmp_path / "d.parquet")
    two, g, dw = (Table.read(tmp_path / f) for f in ("two.parquet", "g.parquet", "d.parquet"))
    rg = np.asarray(g["chi2"]) / np.asarray(g["dof"])
    rd = np.asarray(dw["chi2"]) / np.asarray(dw["dof"])
    used = np.asarray(two["model"]).astype(str)
    assert np.array_equal(used, np.where(rd < rg, "dwarf", "giant"))
    assert np.allclose(np.asarray(two["teff"]), np.where(rd < rg, dw["teff"], g["teff"]))
    assert set(used) == {"dwarf", "giant"}
    with pytest.raises(ConfigError, match="--catalogue"):
        infer_store([model_path[0], tmp_path / "dwarf.npz"], store, tmp_path / "w.parquet", model_by="wheeler2020")


def test_match_by_sky_then_train_joins_on_obj_id(survey, tmp_path):
    from cannonade.tasks.match import match_catalogue

    d, lab, ids = survey
    with SpectraStore(d / "survey.h5") as st:
        meta = st.meta()
    ref = Table({"ra": np.asarray(meta["ra"])[:50] + 0.1 / 3600, "dec": np.asarray(meta["dec"])[:50],
                 "teff": lab[:50, 0], "logg": lab[:50, 1], "fe_h": lab[:50, 2]})
    ref.add_row([200.0, -40.0, 5000.0, 3.0, 0.0])  # nothing there
    ref.write(tmp_path / "ref.fits")
    r = match_catalogue(tmp_path / "ref.fits", d / "survey.h5", tmp_path / "matched.fits", radius_arcsec=1.0)
    assert (r.n_reference, r.n_matched) == (51, 50)
    m = Table.read(tmp_path / "matched.fits")
    assert list(m["obj_id"]) == list(ids[:50]) and np.all(m["sep_arcsec"] < 0.2)


def test_config_init_writes_a_loadable_example(tmp_path, capsys):
    from cannonade.config import load_config

    path = tmp_path / "run.toml"
    assert main(["config", "init", str(path)]) == 0
    cfg = load_config(path)
    assert cfg.target.survey == "lamost" and "dwarf" in cfg.models
    assert main(["config", "init", str(path)]) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert main(["config", "init", "--force", str(path)]) == 0
    nk = tmp_path / "nk.toml"
    assert main(["config", "init", "--recipe", "nandakumar2022", str(nk)]) == 0
    cfg = load_config(nk)
    assert cfg.recipe == "nandakumar2022" and cfg.training.scale == "percentile" and cfg.scaling.censor["alpha_fe"]


def test_model_file_keeps_setup_and_provenance_and_old_files_load(model_path, tmp_path):
    from pathlib import Path

    m = CannonModel.load(model_path[0])
    m.save(tmp_path / "again.npz")
    m2 = CannonModel.load(tmp_path / "again.npz")
    assert m2.spectral_setup_.to_metadata() == m.spectral_setup_.to_metadata()
    assert np.array_equal(m2.spectral_setup_.wavelength, m.spectral_setup_.wavelength)
    assert m2.provenance_ == m.provenance_ and m2.name == "giant"
    # a format-1 file written before the setup existed: loads, setup unknown, nothing refused
    old = CannonModel.load(Path(__file__).resolve().parents[1] / "cannon" / "data" / "model_format1.npz")
    assert old.spectral_setup_.normalise == "unknown" and old.provenance_ == {}


def test_model_classes_hold_a_name_per_spectrum_no_wider_than_the_names():
    """The process running `cannonade infer` holds one class per stored spectrum: as wide as the
    longest name (not 32 characters), and from the number of spectra alone unless a catalogue
    chooses per spectrum."""
    from cannonade.tasks.infer import model_classes

    one = model_classes({"giant": None}, "chi2", 4)
    assert one.tolist() == ["giant"] * 4 and one.dtype == np.dtype("U5")
    either = model_classes({"dwarf": None, "giant": None}, "chi2", np.array(["a", "b"]))
    assert either.tolist() == ["either", "either"] and either.dtype == np.dtype("U6")
    with pytest.raises(ConfigError, match="needs --catalogue"):
        model_classes({"dwarf": None, "giant": None}, "wheeler2020", 3)
