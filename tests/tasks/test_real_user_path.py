"""The user's path on real LAMOST DR1 spectra with their LASP labels (skips without ../shared/data)."""

import numpy as np
import pytest
from astropy.table import Table

from cannonade.cli import main


@pytest.fixture(scope="module")
def dr1(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("dr1")
    src = shared_data / "lamost_dr1"
    assert main(["ingest", str(src / "spectra"), "--out", str(d / "dr1.h5"), "--workers", "1"]) == 0
    return d, src


def test_real_lamost_train_cv_infer(dr1, capsys):
    d, src = dr1
    labels = str(src / "lasp_catalog.csv")
    assert main(["cv", labels, str(d / "dr1.h5"), "--labels", "teff,logg,feh", "--k", "6", "--out", str(d / "cv")]) == 0
    out = capsys.readouterr().out
    assert "131 of 131 labelled stars matched" in out and "'designation'" in out  # the id column, guessed
    cv = Table.read(d / "cv" / "cv_summary.csv")
    scatter = dict(zip(cv["label"], cv["scatter"]))
    # ../shared/data/README: with 131 noisy LASP stars expect 100-300 K, 0.3-0.6 dex, 0.15-0.3 dex
    assert 100 < scatter["teff"] < 300 and 0.25 < scatter["logg"] < 0.6 and 0.12 < scatter["feh"] < 0.3
    assert main(["train", labels, str(d / "dr1.h5"), "--labels", "teff,logg,feh", "--k", "6", "--out", str(d / "lasp.npz")]) == 0
    assert main(["infer", str(d / "lasp.npz"), str(d / "dr1.h5"), "--out", str(d / "labels.fits")]) == 0
    t = Table.read(d / "labels.fits")
    assert len(t) == 179 and t["teff"].unit == "K"
    # the training stars' inferred Teff follows LASP's
    lasp = Table.read(labels, format="ascii.csv")
    by = dict(zip(np.asarray(lasp["designation"]).astype(str), np.asarray(lasp["teff"], float)))
    ids = np.asarray(t["obj_id"]).astype(str)
    has = np.array([i in by for i in ids])
    ok = has & (np.asarray(t["flags"]) == 0)
    assert np.corrcoef(np.asarray(t["teff"])[ok], [by[i] for i in ids[ok]])[0, 1] > 0.9
