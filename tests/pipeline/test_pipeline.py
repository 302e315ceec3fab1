"""The Wheeler+2020 pipeline end to end on a small mock LAMOST x GALAH survey (reduced size).

The full-size run is ``cannonade demo``; here the mock has 1 500 stars (half of them GALAH
reference stars), the models have fewer labels and the cross-validation 4 folds, so the whole
module runs in about a minute on 2 cores.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cannonade import ConfigError
from cannonade.config import evaluate_cut, load_config
from cannonade.pipeline import STAGES, Run, combine_visits, is_giant, label_element, run_pipeline, weighted_mean_label

pytestmark = pytest.mark.slow

CONFIG = """
[run]
out = "run"
seed = 0
chunk_size = {chunk}
workers = 2

[target]
spectra = "mock/lamost/spectra"
catalogue = "mock/lamost/catalogue.fits"

[reference]
catalogue = "mock/galah/catalogue.fits"
spectra = "mock/galah/spectra"

[reference.columns]
snr_c1 = "snr_c1_iraf"
chi2_cannon = "chi2_sp"
flag_cannon = "flag_sp"

[clean]
percentile = 85

[models.dwarf]
labels = ["teff", "logg", "fe_h", "mean_alpha_fe"]

[models.giant]
labels = ["teff", "logg", "fe_h", "mg_fe"]

[training]
cv_folds = 4
min_stars = 30

[dynamics]
gaia = "mock/gaia/catalogue.fits"
n_samples = 3
"""


def write_config(directory, chunk=250, **replace):
    text = CONFIG.format(chunk=chunk)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = Path(directory) / "run.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    from cannonade.simulate import simulate_survey

    d = tmp_path_factory.mktemp("pipeline")
    simulate_survey("lamost-galah", n_stars=1500, seed=3, out=d / "mock", reference_fraction=0.5, corrupt_fraction=0.06)
    return d


@pytest.fixture(scope="module")
def finished(mock):
    cfg = write_config(mock)
    run = run_pipeline(cfg)
    return mock, run


def _truth_of_references(d, cand):
    from astropy.table import Table

    truth = Table.read(d / "mock" / "truth" / "stars.fits")
    obs = Table.read(d / "mock" / "truth" / "observations.fits")
    ref = Table.read(d / "mock" / "galah" / "catalogue.fits")
    tid = {s: i for i, s in enumerate(truth["star_id"])}
    sob2s = {int(so): s for so, s, sv in zip(obs["sobject_id"], obs["star_id"], obs["survey"]) if str(sv) == "galah"}
    rows = [tid[sob2s[int(so)]] for so in ref["sobject_id"][np.asarray(cand["ref_row"])]]
    return np.asarray(truth["labels_corrupted"])[rows]


def test_every_stage_runs_and_writes_the_catalogue(finished):
    d, run = finished
    for stage in STAGES:
        assert run.done(stage), stage
    from cannonade.catalogue.schemas import read_catalogue

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        star = read_catalogue(run.path("catalogue", "per_star.parquet"))
        obs = read_catalogue(run.path("catalogue", "per_observation.fits"))
    for col in ("designation", "giantmodel", "teff", "logg", "fe_h", "chi2", "snrz", "ra", "dec", "R", "Jz", "source_id", "chi2_mg_fe", "chi2_mean_alpha_fe"):
        assert col in star.colnames, col
    assert len(obs) > len(star) > 1000  # repeat visits were combined
    assert np.all(np.asarray(star["n_obs"]) >= 1) and np.any(np.asarray(star["n_obs"]) > 1)
    assert (run.path("run.log")).read_text().count("[cuts]") >= 4
    info = run.stage_info("cuts")
    assert info["n_kept"] < info["n_in"]


def test_cross_validation_is_reported(finished):
    from astropy.table import Table

    _, run = finished
    cv = Table.read(run.path("cv", "cv_summary.csv"), format="ascii.csv")
    assert set(cv["model"]) == {"dwarf", "giant"}
    assert np.all(np.isfinite(cv["scatter"])) and np.all(cv["scatter"] > 0)
    teff = cv[cv["label"] == "teff"]
    assert np.all(teff["scatter"] < 300) and np.all(teff["corr"] > 0.8)


def test_target_labels_match_the_truth_within_cv_scatter(finished):
    """Wheeler+2020 acceptance: RMS(inferred − true) within 1.5× the CV scatter, for target
    stars a user would trust (S/N ≥ 30 as in training, labels inside the training range)."""
    from cannonade.demo import truth_comparison

    d, run = finished
    t = truth_comparison(run.out, d / "mock")
    assert np.all(t["n"] > 50)
    bad = t[t["ratio"] > 1.5]
    assert len(bad) == 0, bad


def test_windowed_chi2_removes_corrupted_reference_labels(finished):
    from astropy.table import Table

    d, run = finished
    cand = Table.read(run.path("training_clean.fits"))
    corrupted = _truth_of_references(d, cand)
    passed = np.asarray(cand["pass_cuts"])
    removed = passed & ~np.asarray(cand["windowed_chi2_ok"])
    rate_bad = removed[passed & corrupted].mean()
    rate_good = removed[passed & ~corrupted].mean()
    assert (passed & corrupted).sum() >= 5
    assert rate_bad > rate_good + 0.2, (rate_bad, rate_good)


def test_rerun_skips_finished_stages(finished):
    d, run = finished
    before = run.path("catalogue", "per_star.fits").stat().st_mtime_ns
    run_pipeline(d / "run.toml")
    assert run.path("catalogue", "per_star.fits").stat().st_mtime_ns == before
    assert "already done" in run.path("run.log").read_text()


def test_killed_inference_resumes_to_the_same_catalogue(finished, tmp_path):
    """Kill `cannonade run` during inference (SIGKILL), rerun: the catalogue is identical."""
    d, run = finished
    work = tmp_path / "resume"
    work.mkdir()
    (work / "mock").symlink_to(d / "mock")
    shutil.copytree(run.out, work / "run", ignore=shutil.ignore_patterns("infer", "catalogue", "*.log"))
    for stage in STAGES[STAGES.index("infer"):]:
        (work / "run" / "stages" / f"{stage}.json").unlink()
    cfg = write_config(work)
    parts = work / "run" / "infer" / "parts"
    env = dict(os.environ, CANNONADE_QUIET="1")
    proc = subprocess.Popen([sys.executable, "-m", "cannonade.cli", "run", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 300 and not list(parts.glob("part_*.npz")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_at_kill = len(list(parts.glob("part_*.npz")))
    n_chunks = run.stage_info("infer")["n_chunks"]
    assert 1 <= n_at_kill < n_chunks, (n_at_kill, n_chunks)
    assert not (work / "run" / "stages" / "infer.json").exists()
    resumed = run_pipeline(cfg)
    assert resumed.stage_info("infer")["resumed_chunks"] == n_at_kill
    from cannonade.catalogue.schemas import read_catalogue

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = read_catalogue(run.path("catalogue", "per_star.fits"))
        b = read_catalogue(resumed.path("catalogue", "per_star.fits"))
    assert a.colnames == b.colnames and len(a) == len(b)
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(x, y, err_msg=c)
        else:
            assert np.all(x == y), c


def test_config_typo_fails_before_any_work(mock, tmp_path):
    cfg = write_config(tmp_path, **{"[clean]\npercentile": "[clean]\npercentil"})
    (tmp_path / "mock").symlink_to(mock / "mock")
    with pytest.raises(ConfigError, match="percentil.*did you mean 'percentile'"):
        Run(cfg)
    assert not (tmp_path / "run").exists()


def test_unknown_column_fails_before_any_work(mock, tmp_path):
    cfg = write_config(tmp_path)
    text = cfg.read_text().replace("[run]", '[cuts]\ntarget = ["snrzz >= 30"]\n\n[run]')
    cfg.write_text(text)
    (tmp_path / "mock").symlink_to(mock / "mock")
    with pytest.raises(ConfigError, match="snrzz.*snrz"):
        Run(cfg)
    assert not (tmp_path / "run").exists()
    # an unknown label column too
    cfg.write_text(write_config(tmp_path).read_text().replace('"mg_fe"]', '"mgfe"]'))
    with pytest.raises(ConfigError, match="mgfe"):
        Run(cfg)
    assert not (tmp_path / "run").exists()


def test_config_validation_messages(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[target]\nspectra = "s"\ncatalogue = "c.fits"\n[reference]\ncatalogue = "r.fits"\n[training]\norder = "two"\n')
    with pytest.raises(ConfigError, match="training.order must be int"):
        load_config(p)
    p.write_text('[target]\nspectra = "s"\n[reference]\ncatalogue = "r.fits"\n')
    with pytest.raises(ConfigError, match="missing required key target.catalogue"):
        load_config(p)
    p.write_text('[target]\nspectra = "s"\ncatalogue = "c.fits"\n[reference]\ncatalogue = "r.fits"\n[cuts]\ntarget = ["__import__(\'os\')"]\n')
    with pytest.raises(ConfigError, match="cuts.target"):
        load_config(p)
    p.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_wheeler_equation_1():
    # cool stars: the boundary is log g = 4.18; hot stars: −6e-4 Teff + 7.3 (5500 K -> 4.0)
    assert is_giant([4800, 4800, 5500, 5500, 6500], [4.1, 4.3, 3.9, 4.1, 3.5]).tolist() == [True, False, True, False, False]
    assert not is_giant([np.nan], [2.0])[0]


def test_cut_expressions():
    from astropy.table import Table

    t = Table(dict(snr_c1_iraf=[10.0, 40, np.nan, 50], chi2_sp=[1.0, 2, 3, 5], flag_sp=[0, 0, 0, 1]))
    al = {"snr_c1": "snr_c1_iraf", "chi2_cannon": "chi2_sp"}
    assert evaluate_cut("snr_c1 >= 30", t, al).tolist() == [False, True, False, True]
    assert evaluate_cut("(chi2_cannon < 4) & (flag_sp == 0)", t, al).tolist() == [True, True, True, False]
    assert evaluate_cut("abs(chi2_sp - 2) <= 1 and not flag_sp", t).tolist() == [True, True, True, False]


def test_repeat_visit_combination_is_snr_weighted():
    ids = np.array(["a", "b", "a", "a"])
    snr = np.array([10.0, 50.0, 30.0, np.nan])
    values = np.array([[1.0], [5.0], [2.0], [100.0]])
    uniq, inv, mean, n = combine_visits(ids, snr, values)
    assert uniq.tolist() == ["a", "b"] and n.tolist() == [3, 1]
    np.testing.assert_allclose(mean[:, 0], [(10 * 1 + 30 * 2) / 40, 5.0])  # NaN S/N gets no weight


def test_error_weighted_mean_label():
    v = np.array([[0.1, 0.3, np.nan], [np.nan, np.nan, np.nan]])
    e = np.array([[0.1, 0.2, 0.1], [0.1, 0.1, 0.1]])
    m, err = weighted_mean_label(v, e)
    np.testing.assert_allclose(m[0], (0.1 / 0.01 + 0.3 / 0.04) / (1 / 0.01 + 1 / 0.04))
    assert np.isnan(m[1]) and np.isfinite(err[0])


def test_label_elements():
    assert [label_element(n) for n in ("fe_h", "mg_fe", "teff", "mean_alpha_fe")] == ["Fe", "Mg", None, "Mean_alpha"]


def test_single_model_without_cleaning_or_dynamics(mock, tmp_path):
    """split = none: one model for every star; no reference spectra, no Gaia, Parquet only."""
    from astropy.table import Table

    (tmp_path / "mock").symlink_to(mock / "mock")
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        CONFIG.format(chunk=500)
        .replace('spectra = "mock/galah/spectra"', 'spectra = ""')
        .replace('[models.dwarf]\nlabels = ["teff", "logg", "fe_h", "mean_alpha_fe"]\n\n[models.giant]', "[split]\nmethod = \"none\"\n\n[models.all]")
        .replace('gaia = "mock/gaia/catalogue.fits"', 'enabled = false')
        + '\n[catalogue]\nformats = ["parquet"]\n'
    )
    run = run_pipeline(cfg)
    assert run.stage_info("clean")["skipped"] and run.stage_info("dynamics")["skipped"]
    cv = Table.read(run.path("cv", "cv_summary.csv"), format="ascii.csv")
    assert set(cv["model"]) == {"all"} and list(cv["label"]) == ["teff", "logg", "fe_h", "mg_fe"]
    assert run.path("catalogue", "per_star.parquet").is_file()
    assert not run.path("catalogue", "per_star.fits").exists()
    # two models with split = none is a config error, before any work
    cfg.write_text(cfg.read_text().replace("[models.all]", '[models.extra]\nlabels = ["teff"]\n\n[models.all]'))
    with pytest.raises(ConfigError, match="exactly one"):
        Run(cfg)
