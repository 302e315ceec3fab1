"""``cannonade demo``: the whole Wheeler+2020 pipeline on a freshly simulated LAMOST x GALAH mock.

1. ``cannonade.simulate`` writes a mock survey (LAMOST spectra + catalogue, GALAH reference
   spectra + catalogue, Gaia, and the truth) into ``OUT/mock``;
2. a run configuration is written to ``OUT/run.toml`` (the shipped example, paths filled in);
3. ``cannonade run`` runs every stage into ``OUT/run``;
4. because the mock's truth is known, the demo ends with a table of the cross-validated scatter
   of each label next to the RMS of (inferred − true) for the target stars.

Default size: 30 000 stars with 10 % GALAH reference stars (3 000 reference stars, ~33 700
LAMOST spectra with repeat visits), chosen so the demo finishes in under 10 minutes on 2 cores
(about 6 minutes measured).

Disk: the demo prints its estimated disk use before it starts (:func:`estimate_disk_use`) and
the measured use when it ends. The mock's spectrum files (gzipped FITS) are the bulk of it; once
the pipeline no longer needs them (``ingest`` read the LAMOST spectra, ``clean`` the GALAH ones)
they are deleted unless ``keep_mock`` (``--keep-mock``); the mock's catalogues, truth and manifest
always stay (the truth comparison needs them).

Rerunning the demo resumes where it stopped: the mock is kept if it is complete, and a finished
run whose mock spectra were deleted is not simulated again; if the spectra are gone while a stage
that reads them is unfinished, the mock is simulated again (same seed, same files) and the run
resumes.
``--quick`` runs only the Cannon core on in-memory mock spectra (a few seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cannonade.util import atomic_path, make_dirs

DEFAULT_N_STARS = 30000
DEFAULT_REFERENCE_FRACTION = 0.10

#: The mock's folders of spectrum files (deleted after the run unless ``keep_mock``).
SPECTRA_DIRS = ("lamost/spectra", "galah/spectra", "apogee/spectra")
#: The stages that read the mock's spectrum files (ingest: LAMOST, clean: GALAH).
SPECTRA_STAGES = ("ingest", "clean")

# Bytes on disk, calibrated on the 30 000-star demo (docs/simulate.md, "Disk use"): per LAMOST
# spectrum (gzipped FITS file, compressed store row), per GALAH reference star (4 gzipped CCD files),
# per star (catalogues, truth, Gaia; run tables, catalogue, models).
_LAMOST_SPECTRA_PER_STAR = 1.123
_BYTES = {"lamost_file": 43.3e3, "galah_star": 450.7e3, "store_row": 23.1e3, "mock_tables": 1.1e3, "run_tables": 5.8e3}


def write_demo_config(out, mock_dir, run_dir, example="example_lamost_galah.toml"):
    """A shipped example config (``cannonade/data/<example>``) with this demo's paths (relative to OUT)."""
    from importlib.resources import files

    text = (files("cannonade") / "data" / example).read_text()
    mock = Path(mock_dir).resolve().relative_to(Path(out).resolve())
    text = text.replace('"mock/', f'"{mock.as_posix()}/').replace('out = "run"', f'out = "{Path(run_dir).name}"')
    path = Path(out) / "run.toml"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def truth_comparison(run_dir, mock_dir, min_snr=30.0):
    """Per model and label: CV scatter, and RMS of (inferred − true) for target stars.

    Targets are those a user would trust: S/N ≥ ``min_snr`` (the training cut) and labels
    inside the training set's range (no extrapolation flag). Derived labels are compared with
    the plain mean of their true components.

    Returns an astropy Table: model, label, n, cv_scatter, rms_true, ratio.
    """
    from astropy.table import Table

    from cannonade.catalogue import read_catalogue

    run_dir, mock_dir = Path(run_dir), Path(mock_dir)
    star = read_catalogue(run_dir / "catalogue" / "per_star.fits")
    truth = Table.read(mock_dir / "truth" / "stars.fits")
    obs = Table.read(mock_dir / "truth" / "observations.fits")
    lam = Table.read(mock_dir / "lamost" / "catalogue.fits")
    cv = Table.read(run_dir / "cv" / "cv_summary.csv", format="ascii.csv")
    f2s = {str(f): s for f, s, sv in zip(obs["filename"], obs["star_id"], obs["survey"]) if str(sv) == "lamost"}
    des2s = {str(d): f2s[str(f)] for d, f in zip(lam["designation"], lam["filename"])}
    tid = {s: i for i, s in enumerate(truth["star_id"])}
    T = truth[np.array([tid[des2s[str(d)]] for d in star["designation"]])]
    components = {"mean_alpha_fe": ["mg_fe", "si_fe", "ca_fe", "ti_fe"], "mean_s_fe": ["ba_fe", "y_fe"]}

    def true(name):
        if name in components:
            return np.mean([np.asarray(T[c], float) for c in components[name]], axis=0)
        return np.asarray(T[name], float)

    giant = np.asarray(star["giantmodel"], bool)
    trusted = (np.asarray(star["snrz"], float) >= min_snr) & ~np.asarray(star["outside_training"], bool)
    rows = []
    for r in cv:
        name, model = str(r["label"]), str(r["model"])
        sel = trusted & (giant == (model == "giant")) & np.isfinite(np.asarray(star[name], float))
        res = np.asarray(star[name], float)[sel] - true(name)[sel]
        rms = float(np.sqrt(np.mean(res**2))) if sel.any() else np.nan
        rows.append((model, name, int(sel.sum()), float(r["scatter"]), rms, rms / float(r["scatter"])))
    return Table(rows=rows, names=("model", "label", "n", "cv_scatter", "rms_true", "ratio"))


def estimate_disk_use(n_stars, reference_fraction=DEFAULT_REFERENCE_FRACTION):
    """Estimated disk use of a demo of ``n_stars`` stars (calibrated on the default demo).

    Returns
    -------
    dict of str -> float
        Bytes: ``peak`` (mock, store and run outputs at once, at the end of the run),
        ``final`` (after the mock's spectra are deleted) and ``final_keep_mock`` (``--keep-mock``).
    """
    n_lamost = _LAMOST_SPECTRA_PER_STAR * n_stars
    spectra = n_lamost * _BYTES["lamost_file"] + reference_fraction * n_stars * _BYTES["galah_star"]
    final = n_lamost * _BYTES["store_row"] + n_stars * (_BYTES["mock_tables"] + _BYTES["run_tables"])
    return {"peak": spectra + final, "final": final, "final_keep_mock": spectra + final}


def disk_use(path):
    """Bytes of all files under ``path`` (sizes as ``ls`` shows them; links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:  # removed while we walk
                pass
    return total


def _spectra_complete(mock):
    """True if every spectrum folder of the mock holds the files its manifest counts."""
    try:
        files = json.loads((mock / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    for d in SPECTRA_DIRS:
        if d in files:
            folder = mock / d
            n = sum(1 for e in os.scandir(folder) if not e.name.startswith(".")) if folder.is_dir() else 0
            if n != int(files[d]["count"]):
                return False
    return True


def _needs_spectra(run_dir):
    """True unless every stage that reads the mock's spectra has finished (its marker exists)."""
    return not all((Path(run_dir) / "stages" / f"{s}.json").is_file() for s in SPECTRA_STAGES)


def _gb(nbytes):
    return f"{nbytes / 1e9:.1f} GB"


def run_demo(out="cannonade_demo", n_stars=DEFAULT_N_STARS, reference_fraction=DEFAULT_REFERENCE_FRACTION, seed=0,
             keep_mock=False):
    """Simulate (if needed), run the pipeline, compare with the truth.

    Parameters
    ----------
    out : str or Path
        The demo folder (``mock/``, ``run.toml``, ``run/``).
    n_stars : int
    reference_fraction : float
        Fraction of the stars that are GALAH reference stars.
    seed : int
    keep_mock : bool
        Keep the mock's spectrum files after the run (default: delete them once the
        pipeline is done with them; catalogues, truth and manifest always stay).

    Returns
    -------
    (Run, astropy Table)
        The finished run and the truth comparison (:func:`truth_comparison`).
    """
    from cannonade.pipeline import run_pipeline
    from cannonade.simulate import simulate_survey

    out = Path(out)
    make_dirs(out, "demo directory (--out)")
    mock = out / "mock"
    run_dir = out / "run"
    est = estimate_disk_use(n_stars, reference_fraction)
    if keep_mock:
        left = f"{_gb(est['final_keep_mock'])} (the mock's spectra kept)"
    else:
        left = f"{_gb(est['final'])} (the mock's spectra deleted; {_gb(est['final_keep_mock'])} with --keep-mock)"
    print(f"disk: this demo needs about {_gb(est['peak'])} under {out} at its peak and leaves {left}", flush=True)
    # "realism": the mock's default observing and reference-label effects (docs/simulate.md); "files": gzipped
    # FITS spectra; a mock written before either is not reused
    params = {"preset": "lamost-galah", "n_stars": int(n_stars), "seed": int(seed), "reference_fraction": float(reference_fraction),
              "realism": "default-1", "files": "fits.gz"}
    stamp = out / "mock.json"
    same_mock = stamp.is_file() and json.loads(stamp.read_text()) == params and (mock / "manifest.json").is_file()
    if not same_mock:
        print(f"simulating {n_stars} stars ({reference_fraction:.0%} GALAH reference stars) into {mock} ...", flush=True)
        if stamp.exists():
            stamp.unlink()  # a mock half rewritten is not the old one
        simulate_survey("lamost-galah", n_stars=n_stars, seed=seed, out=mock, reference_fraction=reference_fraction)
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps(params))
        if run_dir.exists():  # a new mock invalidates a previous run
            shutil.rmtree(run_dir)
    elif _needs_spectra(run_dir) and not _spectra_complete(mock):
        # the same seed gives the same files: the run (and what it has finished) stays valid
        print(f"the mock's spectrum files are gone and the unfinished run needs them: simulating {n_stars} stars "
              f"again (seed {seed}, the same mock) into {mock} ...", flush=True)
        simulate_survey("lamost-galah", n_stars=n_stars, seed=seed, out=mock, reference_fraction=reference_fraction)
    config = write_demo_config(out, mock, run_dir)
    run = run_pipeline(config)
    if not keep_mock:
        removed = 0
        for d in SPECTRA_DIRS:
            if (mock / d).is_dir():
                removed += disk_use(mock / d)
                shutil.rmtree(mock / d)
        if removed:
            print(f"removed the mock's spectrum files ({_gb(removed)}; --keep-mock keeps them); catalogues and truth stay "
                  f"in {mock}", flush=True)
    table = truth_comparison(run.out, mock)
    print(f"disk: {disk_use(out) / 1e9:.2f} GB under {out}", flush=True)
    return run, table


def quick_demo(seed=0):
    """The Cannon core alone: train on mock LAMOST spectra, 12-fold CV, infer held-out stars.

    Returns (table of CV and test figures per label, a one-line summary, the fraction converged).
    """
    from astropy.table import Table

    from cannonade.cannon.crossval import cross_validate
    from cannonade.cannon.model import CannonModel
    from cannonade.simulate import simulate_population, synthesize_normalised

    t0 = time.perf_counter()
    labels = ["teff", "logg", "fe_h", "mg_fe"]
    stars = simulate_population(1200, seed=seed)
    stars = stars[(stars["teff"] > 4000) & (stars["teff"] < 6500)]
    train, test = stars[:500], stars[500:800]
    _, f_tr, i_tr = synthesize_normalised(train, "lamost", snr=80.0, seed=seed)
    _, f_te, i_te = synthesize_normalised(test, "lamost", snr=50.0, seed=seed + 1)
    lab_tr = np.column_stack([np.asarray(train[n], float) for n in labels])
    lab_te = np.column_stack([np.asarray(test[n], float) for n in labels])
    model = CannonModel(labels, order=2).fit(lab_tr, f_tr, i_tr)
    cv = cross_validate(model, lab_tr, f_tr, i_tr, k=12, seed=seed)
    model.calibrate(cv)  # errors right at every S/N, flags (docs/calibration.md)
    res = model.infer(f_te, i_te)
    rms = np.sqrt(np.nanmean((res.labels - lab_te) ** 2, axis=0))
    t = Table(
        dict(label=labels, cv_bias=cv.bias, cv_scatter=cv.scatter, cv_corr=cv.corr, test_rms=rms,
             median_error=np.nanmedian(res.errors, axis=0), median_formal_error=np.nanmedian(res.raw_errors, axis=0))
    )
    for c in t.colnames[1:]:
        t[c].format = ".4g"
    summary = (f"Cannon core on mock LAMOST spectra: {len(train)} training stars x {f_tr.shape[1]} pixels, "
               f"{len(test)} test stars at S/N 50 ({time.perf_counter() - t0:.1f} s)")
    return t, summary, float(res.converged.mean())


# --------------------------------------------------------------------------- Nandakumar+2022
SCALING_N_STARS = 3000


def systematics_comparison(run_dir):
    """Table 1 beside Table 3: per label, the mean and σ of survey A − B for all common stars,
    before scaling and on each survey's scale (from ``tables/systematics.csv``)."""
    from astropy.table import Table

    t = Table.read(Path(run_dir) / "tables" / "systematics.csv", format="ascii.csv")
    t = t[t["sample"] == "all"]
    stages = list(dict.fromkeys(t["stage"]))
    rows = []
    for lab in dict.fromkeys(t["label"]):
        row = [lab]
        for s in stages:
            r = t[(t["label"] == lab) & (t["stage"] == s)][0]
            row += [float(r["mean"]), float(r["sigma"])]
        rows.append(row)
    names = ["label"] + [f"{s}_{k}" for s in stages for k in ("mean", "sigma")]
    return Table(rows=rows, names=names)


def run_scaling_demo(out="cannonade_demo_nandakumar", n_stars=SCALING_N_STARS, seed=0, keep_mock=False):
    """The Nandakumar+2022 recipe on an APOGEE x GALAH mock: simulate, run, summarise.

    Returns (Run, systematics table, clusters table).
    """
    from astropy.table import Table

    from cannonade.pipeline import run_pipeline
    from cannonade.simulate import simulate_survey

    out = Path(out)
    make_dirs(out, "demo directory (--out)")
    mock, run_dir = out / "mock", out / "run"
    params = {"preset": "apogee-galah", "n_stars": int(n_stars), "seed": int(seed), "files": "fits.gz", "version": 1}
    stamp = out / "mock.json"
    same = stamp.is_file() and json.loads(stamp.read_text()) == params and (mock / "manifest.json").is_file()
    if not same or (not (run_dir / "stages" / "ingest_reference.json").is_file() and not _spectra_complete(mock)):
        print(f"simulating {n_stars} stars observed by APOGEE and/or GALAH into {mock} ...", flush=True)
        if stamp.exists():
            stamp.unlink()
        simulate_survey("apogee-galah", n_stars=n_stars, seed=seed, out=mock)
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps(params))
        if not same and run_dir.exists():
            shutil.rmtree(run_dir)
    run = run_pipeline(write_demo_config(out, mock, run_dir, example="example_apogee_galah.toml"))
    if not keep_mock:
        for d in SPECTRA_DIRS:
            if (mock / d).is_dir():
                shutil.rmtree(mock / d)
    clusters = Table.read(run_dir / "tables" / "clusters.csv", format="ascii.csv")
    print(f"disk: {disk_use(out) / 1e9:.2f} GB under {out}", flush=True)
    return run, systematics_comparison(run_dir), clusters
