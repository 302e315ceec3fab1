"""Small run directories for the report's tests, built in seconds from the toy survey.

Instead of running the pipeline (about a minute even at reduced size), the run directories are
written with the library's own writers in the layouts the stages write (docs/pipeline.md):
models trained, cross-validated and calibrated on :mod:`cannonade.simulate.toy` spectra
(``models/*.npz``, ``cv/*``), a spectra store (``target.h5``), per-star and per-observation
catalogues with dynamics and Gaia astrometry (:func:`cannonade.catalogue.write_catalogue`),
stage markers and ``config.toml``; wide binaries are planted so the science analyses have
something to find. A Nandakumar+2022-style run reuses the models under the four paper names and
adds the ``tables/`` files (residuals, systematics, clusters) and a combined catalogue.
"""

import json
import shutil
import warnings

import numpy as np
import pytest
from astropy.table import Table, vstack

LABELS = ["teff", "logg", "fe_h", "alpha_fe"]
N_TRAIN = 260
N_STARS = 700
N_BINARIES = 20
WHEELER_STAGES = ("ingest", "crossmatch", "cuts", "clean", "split", "labels", "train", "infer", "combine", "dynamics",
                  "catalogue")


def _config_text(recipe, extra=""):
    header = ("# The configuration of the last `cannonade run` in this directory, as validated (paths absolute,\n"
              "# defaults filled in); configuration fingerprint 0123456789abcdef.\n")
    return header + f'recipe = "{recipe}"\n' + extra


WHEELER_CONFIG = """
[target]
survey = "lamost"
id_column = "obsid"

[cuts]
target = ["snrz >= 30"]
reference = ["snr_c1 >= 30", "flag_cannon == 0"]

[clean]
enabled = true
percentile = 85.0

[models.dwarf]
labels = ["teff", "logg", "fe_h", "alpha_fe"]

[models.giant]
labels = ["teff", "logg", "fe_h", "alpha_fe"]

[training]
cv_folds = 3
"""

NANDAKUMAR_CONFIG = """
[target]
survey = "apogee"

[reference]
survey = "galah"

[training]
cv_folds = 3

[scaling]
labels = ["teff", "logg", "fe_h", "alpha_fe"]
"""


def _train(mock, truth, offset, snr, rng, wl, name):
    from cannonade.cannon.crossval import cross_validate
    from cannonade.cannon.model import CannonModel
    from cannonade.simulate.toy import REF_ERR

    flux, ivar = mock.observe(truth, offset, snr, rng)
    err = REF_ERR * rng.uniform(0.5, 1.5, truth.shape)
    ref = truth + err * rng.normal(size=truth.shape)
    m = CannonModel(LABELS, order=2, show_progress=False, name=name).fit(ref, flux, ivar, wavelength=wl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # toy-sized training set: sparse in CV units
        cv = cross_validate(m, ref, flux, ivar, k=3, seed=0)
        m.calibrate(cv, label_errors=err, distance_threshold=1e3)
    return m, cv, ref, err


def make_wheeler_run(root):
    """A small finished Wheeler+2020-recipe run directory under ``root``; returns its path."""
    from cannonade.catalogue import write_catalogue
    from cannonade.simulate.toy import KielMock, log_uniform
    from cannonade.spectra.store import write_store

    run = root / "run"
    for d in ("stages", "cv", "models", "catalogue"):
        (run / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    mock = KielMock(n_pixels=160, seed=1)
    wl = np.linspace(4800.0, 5600.0, 160)
    models, cv_tables, training = {}, [], []
    truth, offset = mock.draw(2 * N_TRAIN, rng)
    giant = truth[:, 1] < 3.5
    ref_row = np.arange(len(truth))
    for name, sel in (("dwarf", ~giant), ("giant", giant)):
        m, cv, ref, err = _train(mock, truth[sel], offset[sel], log_uniform(int(sel.sum()), 30, 150, rng), rng, wl, name)
        m.save(run / "models" / f"{name}.npz")
        models[name] = m
        s = cv.table()
        s["model"], s["n_train"] = name, int(sel.sum())
        s.write(run / "cv" / f"{name}_summary.csv", format="ascii.csv", overwrite=True)
        cv_tables.append(s)
        c = m.calibration_.table()
        c["model"] = name
        c.write(run / "cv" / f"{name}_calibration.csv", format="ascii.csv", overwrite=True)
        p = cv.predictions_table()
        p["ref_row"] = ref_row[sel]
        p.write(run / "cv" / f"{name}_predictions.fits", overwrite=True)
        ts = Table({"ref_row": ref_row[sel], "model_class": [name] * int(sel.sum())})
        for k, lab in enumerate(LABELS):
            ts[lab], ts[f"e_{lab}"] = ref[:, k], err[:, k]
        training.append(ts)
    vstack(cv_tables).write(run / "cv" / "cv_summary.csv", format="ascii.csv", overwrite=True)
    vstack(training).write(run / "training_set.fits", overwrite=True)

    # the target survey: stars with planted wide binaries (a twin of a dwarf a few arcsec away)
    lab, off = mock.draw(N_STARS, rng)
    lab[:, 3] += rng.normal(0, 0.08, N_STARS)  # [alpha/Fe] spread at fixed [Fe/H]: what tells field pairs from twins
    dwarfs = np.flatnonzero(lab[:, 1] >= 3.5)
    first, second = dwarfs[:N_BINARIES], dwarfs[N_BINARIES:2 * N_BINARIES]
    lab[second] = lab[first] + np.array([60.0, 0.0, 0.0, 0.0])
    off[second] = off[first]
    snr = log_uniform(N_STARS, 40, 150, rng)
    flux, ivar = mock.observe(lab, off, snr, rng)
    obsid = np.arange(N_STARS) + 10_000
    write_store(run / "target.h5", wl, flux, ivar, meta_table={"obj_id": obsid.astype(str)},
                attrs={"grid": "toy", "normalise": "none"})
    cls = np.where(lab[:, 1] < 3.5, "giant", "dwarf")
    cat = Table({"designation": [f"J{i:06d}" for i in range(N_STARS)], "giantmodel": cls == "giant"})
    cols = {lab_: np.full(N_STARS, np.nan) for lab_ in LABELS}
    errs = {lab_: np.full(N_STARS, np.nan) for lab_ in LABELS}
    raw = {lab_: np.full(N_STARS, np.nan) for lab_ in LABELS}
    flags, chi2, dof, snr_out = (np.zeros(N_STARS, np.int64), np.zeros(N_STARS), np.zeros(N_STARS, np.int64),
                                 np.zeros(N_STARS))
    for name, m in models.items():
        sel = cls == name
        r = m.infer(flux[sel], ivar[sel])
        for k, lab_ in enumerate(LABELS):
            cols[lab_][sel], errs[lab_][sel], raw[lab_][sel] = r.labels[:, k], r.errors[:, k], r.raw_errors[:, k]
        flags[sel], chi2[sel], dof[sel], snr_out[sel] = r.flags, r.chi2, r.dof, r.snr
    for lab_ in LABELS:
        cat[lab_], cat[f"e_{lab_}"], cat[f"raw_e_{lab_}"] = cols[lab_], errs[lab_], raw[lab_]
    for extra in ("ba_fe", "eu_fe"):  # abundances the toy model lacks, for the abundance planes
        cat[extra], cat[f"e_{extra}"] = 0.1 - 0.3 * cols["fe_h"] + rng.normal(0, 0.1, N_STARS), np.full(N_STARS, 0.1)
    cat["chi2"], cat["dof"], cat["snrz"], cat["snr"] = chi2, dof, snr, snr_out
    cat["obsid"], cat["model_class"], cat["flags"] = obsid, cls, flags
    ra, dec = rng.uniform(100.0, 110.0, N_STARS), rng.uniform(20.0, 30.0, N_STARS)
    ra[second], dec[second] = ra[first] + 4.0 / 3600.0, dec[first]
    parallax = rng.uniform(0.4, 3.0, N_STARS)
    parallax[second] = parallax[first]
    pmra, pmdec = rng.normal(0, 20, N_STARS), rng.normal(0, 20, N_STARS)
    pmra[second], pmdec[second] = pmra[first], pmdec[first]
    cat["ra"], cat["dec"], cat["parallax"], cat["parallax_error"] = ra, dec, parallax, np.full(N_STARS, 0.03)
    cat["pmra"], cat["pmra_error"], cat["pmdec"], cat["pmdec_error"] = pmra, np.full(N_STARS, 0.05), pmdec, np.full(N_STARS, 0.05)
    obs = cat.copy()
    R = 8.5 - 4.0 * (cols["fe_h"] + 0.2) + rng.normal(0, 1.5, N_STARS)  # a metallicity gradient
    z = rng.normal(0, 0.6, N_STARS) * np.where(rng.random(N_STARS) < 0.15, 5.0, 1.0)
    cat["R"], cat["phi"], cat["z"] = R, rng.uniform(-0.25, 0.25, N_STARS), z
    cat["vR"], cat["vT"], cat["vz"] = rng.normal(0, 30, N_STARS), rng.normal(200, 60, N_STARS), rng.normal(0, 20, N_STARS)
    cat["JR"], cat["Jphi"], cat["Jz"] = rng.exponential(50, N_STARS), R * 200.0, rng.exponential(25, N_STARS)
    prov = {"software": "cannonade", "version": "0.1.0", "recipe": "wheeler2020"}
    write_catalogue(cat, run / "catalogue" / "per_star.parquet", label_names=LABELS + ["ba_fe", "eu_fe"], provenance=prov)
    write_catalogue(cat, run / "catalogue" / "per_star.fits", label_names=LABELS + ["ba_fe", "eu_fe"], provenance=prov)
    write_catalogue(obs, run / "catalogue" / "per_observation.parquet", label_names=LABELS, provenance=prov)

    counts = {"cuts": {"n_in": 600, "n_kept": 2 * N_TRAIN, "counts": {"matched": 600, "target: snrz >= 30": 580,
                                                                       "reference: snr_c1 >= 30": 540}},
              "clean": {"n_in": 540, "n_kept": 2 * N_TRAIN}, "catalogue": {"n_stars": N_STARS, "n_observations": N_STARS}}
    for stage in WHEELER_STAGES:
        info = {**counts.get(stage, {"n": 1}), "seconds": 0.1, "fingerprint": "0" * 16, "fingerprint_of": {"config": {}}}
        (run / "stages" / f"{stage}.json").write_text(json.dumps(info))
    (run / "config.toml").write_text(_config_text("wheeler2020", WHEELER_CONFIG))
    return run


def make_nandakumar_run(root, wheeler):
    """A Nandakumar+2022-style run directory: the toy models under the four paper names plus the tables/ files."""
    from cannonade.catalogue import write_catalogue

    run = root / "run"
    for d in ("stages", "cv", "models", "catalogue", "tables"):
        (run / d).mkdir(parents=True, exist_ok=True)
    summaries = []
    for name, src in (("ACGS", "giant"), ("ACAA", "giant"), ("GCAA", "dwarf"), ("GCGS", "dwarf")):
        shutil.copy(wheeler / "models" / f"{src}.npz", run / "models" / f"{name}.npz")
        for kind in ("calibration.csv", "predictions.fits"):
            shutil.copy(wheeler / "cv" / f"{src}_{kind}", run / "cv" / f"{name}_{kind}")
        s = Table.read(wheeler / "cv" / f"{src}_summary.csv", format="ascii.csv")
        s["model"] = name
        s.write(run / "cv" / f"{name}_summary.csv", format="ascii.csv", overwrite=True)
        summaries.append(s)
        wl = np.linspace(15100.0, 17000.0, 300) if name.startswith("A") else np.r_[np.linspace(4716, 4896, 100),
                                                                                  np.linspace(5650, 5870, 100)]
        med = 0.002 * np.sin(wl / 10.0)
        Table({"wavelength": wl, "median": med, "p16": med - 0.01, "p84": med + 0.01, "n": np.full(wl.size, 100)}).write(
            run / "tables" / f"residuals_{name}.csv", format="ascii.csv", overwrite=True)
    vstack(summaries).write(run / "cv" / "cv_summary.csv", format="ascii.csv", overwrite=True)
    rows = [(lab, sample, stage, 0.1 * k, 0.05, 50) for k, stage in enumerate(("before", "after_apogee_scale",
                                                                               "after_galah_scale"))
            for sample in ("all", "giants", "dwarfs") for lab in LABELS]
    Table(rows=rows, names=("label", "sample", "stage", "mean", "sigma", "n")).write(
        run / "tables" / "systematics.csv", format="ascii.csv", overwrite=True)
    Table(rows=[("M67", "combined_apogee_scale", "fe_h", 20, 0.01, 0.05), ("M67", "apogee_survey", "fe_h", 12, 0.02, 0.06)],
          names=("cluster", "catalogue", "label", "n", "median", "sigma")).write(
        run / "tables" / "clusters.csv", format="ascii.csv", overwrite=True)
    src = {k: np.asarray(v) for k, v in Table.read(wheeler / "catalogue" / "per_star.fits").columns.items()}
    cat = Table({"unique_id": src["designation"], "star_id": src["designation"], "ra": src["ra"], "dec": src["dec"]})
    for lab in LABELS:  # plain arrays: the schema gives the units and descriptions
        cat[f"{lab}Cann"], cat[f"e_{lab}Cann"] = src[lab], src[f"e_{lab}"]
        cat[lab], cat[f"e_{lab}"] = src[lab], src[f"e_{lab}"]
    cat["flag_id"] = (np.arange(len(cat)) % 2).astype(np.int64)
    cat["flags"] = np.asarray(src["flags"], np.int64)
    for scale in ("apogee", "galah"):
        write_catalogue(cat, run / "catalogue" / f"combined_{scale}_scale.parquet", schema="nandakumar2022",
                        label_names=LABELS)
    for stage in ("ingest", "ingest_reference", "common", "scaled_train", "scaled_infer", "systematics", "combined",
                  "clusters"):
        (run / "stages" / f"{stage}.json").write_text(json.dumps({"n": 1, "seconds": 0.1}))
    (run / "config.toml").write_text(_config_text("nandakumar2022", NANDAKUMAR_CONFIG))
    return run


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory):
    """{'wheeler2020': run directory, 'nandakumar2022': run directory}, built once per session."""
    w = make_wheeler_run(tmp_path_factory.mktemp("wheeler_run"))
    n = make_nandakumar_run(tmp_path_factory.mktemp("nandakumar_run"), w)
    return {"wheeler2020": w, "nandakumar2022": n}


@pytest.fixture(scope="session")
def wheeler_report(small_runs):
    """The report of the small Wheeler+2020 run: (run directory, index.html path), written once."""
    from cannonade.report import write_report

    run = small_runs["wheeler2020"]
    return run, write_report(run)
