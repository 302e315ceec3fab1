"""The nandakumar2022 recipe end to end on the demo's APOGEE x GALAH mock with injected survey
systematics (reduced: 4-fold CV, where the demo runs the paper's 12 folds; the models are the
same, their calibration is made from fewer folds and repeat stars)."""

import json
import warnings

import numpy as np
import pytest
from astropy.table import Table

from cannonade.pipeline import run_pipeline
from cannonade.simulate import simulate_survey

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    d = tmp_path_factory.mktemp("nandakumar")
    # the demo's own mock (3 000 stars, seed 0; 532 training stars): a smaller one (1 500 stars, 256
    # training stars) overfits its models, and Table 3 is measured on the training stars
    simulate_survey("apogee-galah", n_stars=3000, seed=0, out=d / "mock")
    from importlib.resources import files

    text = (files("cannonade") / "data" / "example_apogee_galah.toml").read_text()
    text = text.replace("cv_folds = 12", "cv_folds = 4").replace("chunk_size = 2000", "chunk_size = 600")
    text = text.replace("repeat_stars = 300", "repeat_stars = 120")
    (d / "run.toml").write_text(text)
    run = run_pipeline(d / "run.toml")
    return d, run


def test_outputs_have_the_pinned_names_and_columns(scaled):
    d, run = scaled
    sys_t = Table.read(d / "run" / "tables" / "systematics.csv", format="ascii.csv")
    assert sys_t.colnames == ["label", "sample", "stage", "mean", "sigma", "n"]
    assert set(sys_t["sample"]) == {"all", "giants", "dwarfs"}
    assert set(sys_t["stage"]) == {"before", "after_apogee_scale", "after_galah_scale"}
    cl = Table.read(d / "run" / "tables" / "clusters.csv", format="ascii.csv")
    assert cl.colnames == ["cluster", "catalogue", "label", "n", "median", "sigma"]
    for scale in ("apogee", "galah"):
        for fmt in ("fits", "parquet"):
            path = d / "run" / "catalogue" / f"combined_{scale}_scale.{fmt}"
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                t = Table.read(path)
            for c in ("unique_id", "fe_hCann", "e_fe_hCann", "fe_h", "e_fe_h", "flag_id", "flag_Cannon_dist",
                      "flag_spectra", "flag_sp_aspcap", "flag_survey", "flag_training", "r_chi_sq", "snrCann"):
                assert c in t.colnames, (path.name, c)
            assert set(np.asarray(t["flag_id"]).tolist()) == {0, 1}
            assert str(t["fe_hCann"].unit) == "dex" and all(t[c].description for c in t.colnames)
    # the example config refines the training labels once (scaling.refine_labels = 1): per survey a
    # table of catalogue and refined labels, the refined ones with smaller errors than quoted
    common = Table.read(d / "run" / "common.fits")
    for side, survey in (("target", "apogee"), ("reference", "galah")):
        ref = Table.read(d / "run" / "cv" / f"{survey}_refined_labels.fits")
        assert len(ref) == int(np.sum(common["in_training"]))
        for lab in ("teff", "fe_h", "alpha_fe"):
            quoted = np.asarray(common[f"{side}_e_{lab}"], float)[np.asarray(ref["common_row"])]
            ok = np.isfinite(ref[f"{lab}_refined"]) & np.isfinite(quoted) & (quoted > 0)
            assert ok.sum() > 0.8 * len(ref)
            e_ref = np.asarray(ref[f"e_{lab}_refined"])[ok]
            assert np.all(e_ref <= quoted[ok] * (1 + 1e-9)) and np.median(e_ref) < np.median(quoted[ok]), (survey, lab)
            assert np.allclose(ref[lab], np.asarray(common[f"{side}_{lab}"], float)[np.asarray(ref["common_row"])],
                               equal_nan=True)
    for name in ("ACGS", "ACAA", "GCAA", "GCGS"):
        assert (d / "run" / "models" / f"{name}.npz").is_file()
        res = Table.read(d / "run" / "tables" / f"residuals_{name}.csv", format="ascii.csv")
        assert res.colnames[:4] == ["wavelength", "median", "p16", "p84"]
        ok = np.isfinite(res["median"])
        assert np.nanmedian(np.abs(res["median"][ok])) < 0.01  # the models reproduce the training spectra


def test_scaling_removes_the_survey_offsets(scaled):
    d, _ = scaled
    t = Table.read(d / "run" / "tables" / "systematics.csv", format="ascii.csv")
    t = t[t["sample"] == "all"]

    def get(label, stage):
        r = t[(t["label"] == label) & (t["stage"] == stage)][0]
        return float(r["mean"]), float(r["sigma"])

    # the acceptance: >= 80 % for both labels on both scales, and sigma down; measured on
    # this mock with the example's refine_labels = 1 (2026-11-30): [Fe/H] 92 % / 87 % (sigma 0.161
    # -> 0.055 / 0.071), [alpha/Fe] 97 % / 86 % (sigma 0.052 -> 0.041 / 0.047); with the paper's
    # catalogue labels the GALAH-scale [alpha/Fe] sigma rises to 0.071 (docs/pipeline.md)
    for label, stage, shrink, sigma_factor in (("fe_h", "after_apogee_scale", 0.8, 1.0), ("fe_h", "after_galah_scale", 0.8, 1.0),
                                               ("alpha_fe", "after_apogee_scale", 0.8, 1.0),
                                               ("alpha_fe", "after_galah_scale", 0.8, 1.0)):
        before, sig_before = get(label, "before")
        assert abs(before) > 0.03, (label, before)  # the mock's injected systematic is there
        after, sig_after = get(label, stage)
        assert abs(after) <= (1 - shrink) * abs(before), (label, stage, before, after)
        assert sig_after < sigma_factor * sig_before, (label, stage, sig_before, sig_after)


def test_each_model_is_calibrated_on_its_own_surveys_repeat_spectra(scaled):
    """APOGEE-spectra models on apStar visits, GALAH-spectra models on repeat exposures (Eq. 6)."""
    d, _ = scaled
    for name in ("ACGS", "ACAA", "GCAA", "GCGS"):
        cal = Table.read(d / "run" / "cv" / f"{name}_calibration.csv", format="ascii.csv")
        assert np.all(np.asarray(cal["n_repeat_pairs"]) >= 20), (name, list(cal["n_repeat_pairs"]))
        f = np.asarray(cal["repeat_factor"], float)
        assert np.all(np.isfinite(f) & (f > 0)), (name, f)
    log = (d / "run" / "run.log").read_text()
    assert "ACAA: calibrating from" in log and "repeat spectra of" in log


def test_clusters_recover_their_metallicity(scaled):
    """Members' median [Fe/H] within the CV scatter of the truth as each scale reports it: the
    true [Fe/H] plus that survey's own injected systematic (the members' median; up to +0.06 dex
    on the APOGEE scale and −0.21 dex on the GALAH scale for 47 Tuc's cool giants)."""
    d, run = scaled
    truth = Table.read(d / "mock" / "clusters" / "clusters.csv", format="ascii.csv")
    true_feh = dict(zip(truth["name"], truth["fe_h"]))
    stars = Table.read(d / "mock" / "truth" / "stars.fits")
    names = np.asarray(stars["cluster_name"]).astype(str)
    sys = {survey: {n: float(np.nanmedian(np.asarray(stars[f"{survey}_sys_fe_h"], float)[names == n])) for n in true_feh}
           for survey in ("apogee", "galah")}
    cl = Table.read(d / "run" / "tables" / "clusters.csv", format="ascii.csv")
    cv = Table.read(d / "run" / "cv" / "cv_summary.csv", format="ascii.csv")
    for scale, models, shift in (("apogee", ("ACAA", "GCAA"), sys["apogee"]), ("galah", ("ACGS", "GCGS"), sys["galah"])):
        scatter = max(float(cv[(cv["model"] == m) & (cv["label"] == "fe_h")]["scatter"][0]) for m in models)
        rows = cl[(cl["catalogue"] == f"combined_{scale}_scale") & (cl["label"] == "fe_h") & (cl["n"] >= 5)]
        assert len(rows) >= 3
        for r in rows:
            want = true_feh[str(r["cluster"])] + shift.get(str(r["cluster"]), 0.0)
            assert abs(r["median"] - want) < scatter, (scale, r["cluster"], r["median"], want, scatter)


def test_rerun_redoes_nothing(scaled):
    d, _ = scaled
    before = {p.name: p.stat().st_mtime_ns for p in (d / "run" / "stages").glob("*.json")}
    run_pipeline(d / "run.toml")
    after = {p.name: p.stat().st_mtime_ns for p in (d / "run" / "stages").glob("*.json")}
    assert before == after and len(before) == 8
    info = json.loads((d / "run" / "stages" / "common.json").read_text())
    assert info["n_training"] >= 100
