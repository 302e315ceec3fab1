"""Mock surveys: determinism, file formats, catalogue joins, truths, physics and realism."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from cannonade.simulate import (
    normalised_model,
    simulate_population,
    simulate_survey,
    synthesize,
    synthesize_normalised,
)
from cannonade.simulate import catalogues as cat
from cannonade.simulate.spectra import equivalent_widths, line_list

N = 240  # stars in the file-level fixtures


def _s(a):
    return np.char.strip(np.asarray(a).astype(str))


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    out = tmp_path_factory.mktemp("mock") / "run"
    manifest = simulate_survey("lamost-galah", n_stars=N, seed=11, out=out, reference_fraction=0.1)
    return out, manifest


@pytest.fixture(scope="module")
def mock_apogee(tmp_path_factory):
    out = tmp_path_factory.mktemp("mock_ap") / "run"
    manifest = simulate_survey("apogee-galah", n_stars=25, seed=5, out=out)
    return out, manifest


def _all_files(root):
    return sorted(p.relative_to(root) for p in Path(root).rglob("*") if p.is_file())


def _spectra(folder):
    """The spectrum files of a mock folder (gzipped FITS)."""
    return sorted(Path(folder).glob("*.fits.gz"))


# ----------------------------------------------------------------------------- determinism
def test_same_seed_identical_files(mock, tmp_path):
    out, _ = mock
    again = tmp_path / "again"
    simulate_survey("lamost-galah", n_stars=N, seed=11, out=again, reference_fraction=0.1)
    files = _all_files(out)
    assert files == _all_files(again)
    for f in files:
        assert (out / f).read_bytes() == (again / f).read_bytes(), f


def test_different_seed_differs(mock, tmp_path):
    out, _ = mock
    other = tmp_path / "other"
    simulate_survey("lamost-galah", n_stars=40, seed=12, out=other)
    a = Table.read(out / "truth" / "stars.fits")
    b = Table.read(other / "truth" / "stars.fits")
    assert not np.allclose(a["teff"][:40], b["teff"])


def test_manifest(mock):
    out, manifest = mock
    m = json.loads((out / "manifest.json").read_text())
    assert m == json.loads(json.dumps(manifest))
    c = m["counts"]
    assert m["preset"] == "lamost-galah" and m["seed"] == 11 and m["n_stars"] == N
    assert c["stars"] == N and c["reference_stars"] == round(0.1 * N)
    assert c["galah_spectra"] == 4 * c["reference_stars"]
    assert m["files"]["lamost/spectra"]["count"] == c["lamost_spectra"] > N
    # ~10 % of stars revisited
    assert 0.04 * N <= c["repeat_visit_stars"] <= 0.18 * N


# ----------------------------------------------------------------------------- files
def test_spectrum_files_are_gzipped_fits_with_the_plain_fits_inside(mock, tmp_path):
    import gzip

    from cannonade.simulate.writers import card, gzip_bytes, write_fits_images

    from cannonade.io import read_spectrum

    out, _ = mock
    for d, survey in (("lamost/spectra", "lamost"), ("galah/spectra", "galah")):
        names = [p.name for p in (out / d).iterdir()]
        assert names and all(n.endswith(".fits.gz") for n in names), d
        assert gzip.decompress((out / d / names[0]).read_bytes())[:9] == b"SIMPLE  ="
        assert read_spectrum(out / d / names[0]).meta["survey"] == survey
    # a .gz name is compressed deterministically (no time stamp, no name), a plain name is not
    hdus = [(np.arange(12, dtype=np.float32).reshape(3, 4), [card("OBJECT", "x")], None)]
    write_fits_images(tmp_path / "a.fits.gz", hdus)
    write_fits_images(tmp_path / "a.fits", hdus)
    raw = (tmp_path / "a.fits").read_bytes()
    gz = (tmp_path / "a.fits.gz").read_bytes()
    assert gzip.decompress(gz) == raw and gz == gzip_bytes([raw]) and gz[4:8] == b"\0\0\0\0"
    with fits.open(tmp_path / "a.fits.gz") as h:
        np.testing.assert_array_equal(h[0].data, hdus[0][0])


def test_spectrum_file_write_failure_names_the_file(tmp_path):
    from cannonade.simulate import SimulationWriteError
    from cannonade.simulate.writers import write_fits_images

    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(SimulationWriteError, match="x.fits.gz"):
        write_fits_images(tmp_path / "blocker" / "x.fits.gz", [(np.ones(4, np.float32), [], None)])


def test_fits_files_valid_and_layouts(mock):
    out, _ = mock
    lam = _spectra(out / "lamost" / "spectra")
    gal = _spectra(out / "galah" / "spectra")
    for p in lam[:20] + gal[:8]:
        with fits.open(p) as h:
            h.verify("exception")
    with fits.open(lam[0]) as h:
        assert h[0].data.shape == (5, 3909) and h[0].data.dtype.itemsize == 4
        hdr = h[0].header
        for k in ("COEFF0", "COEFF1", "Z", "Z_ERR", "SN_U", "SN_G", "SN_R", "SN_I", "SN_Z", "DESIG", "RA", "DEC",
                  "OBSID", "LMJD", "PLANID", "SPID", "FIBERID", "VACUUM"):
            assert k in hdr, k
        assert hdr["FILENAME"] + ".gz" == lam[0].name  # the header names the FITS file inside
        ivar = h[0].data[1]
        assert np.all(ivar >= 0) and np.all(h[0].data[3][ivar == 0] >= 0)
    with fits.open(gal[0]) as h:
        assert [e.name for e in h[1:3]] == ["normalized", "relative_error"]
        assert h[0].data.shape == (4096,)
        assert {"CRVAL1", "CDELT1", "RA_ICRS", "DEC_ICRS", "RVCOM", "SNR"} <= set(h[0].header)
    # file name pattern: <15-digit sobject_id><ccd>.fits.gz
    assert all(len(p.name) == 16 + 8 and p.name[15] in "1234" for p in gal)


def test_every_file_reads_back_through_io(mock, mock_apogee):
    io = pytest.importorskip("cannonade.spectra.readers")
    out, _ = mock
    files = _spectra(out / "lamost" / "spectra") + _spectra(out / "galah" / "spectra")
    files += _spectra(mock_apogee[0] / "apogee" / "spectra")
    assert files
    lamcat = Table.read(out / "lamost" / "catalogue.fits")
    obsid_of = dict(zip(_s(lamcat["filename"]), lamcat["obsid"]))
    for p in files:
        sp = io.read_spectrum(p)
        assert sp.flux.shape == sp.ivar.shape == sp.wavelength.shape
        good = sp.ivar > 0
        assert good.mean() > 0.5, p
        assert np.all(np.isfinite(sp.flux[good])) and np.all(sp.ivar >= 0)
        assert np.all(np.diff(sp.wavelength) > 0)
        survey = sp.meta["survey"]
        if survey == "lamost":
            assert 3690 < sp.wavelength[0] < 3710 and 9050 < sp.wavelength[-1] < 9110
            assert str(sp.meta["obj_id"]) == str(obsid_of[p.name])
            assert np.isfinite(sp.meta["rv"]) and np.isfinite(sp.meta["redshift"])
        elif survey == "galah":
            assert sp.meta["sobject_id"] == p.name[:15]
        else:
            assert survey == "apogee" and 15090 < sp.wavelength[0] < 15110 and sp.meta["n_rows"] >= 4


def test_catalogues_join_to_spectra(mock):
    out, _ = mock
    lam_files = {p.name for p in _spectra(out / "lamost" / "spectra")}
    gal_files = {p.name for p in _spectra(out / "galah" / "spectra")}
    lam = Table.read(out / "lamost" / "catalogue.fits")
    gal = Table.read(out / "galah" / "catalogue.fits")
    obs = Table.read(out / "truth" / "observations.fits")
    truth = Table.read(out / "truth" / "stars.fits")
    gaia = Table.read(out / "gaia" / "catalogue.fits")
    assert set(_s(lam["filename"])) == lam_files and len(lam) == len(lam_files)
    assert len(np.unique(lam["obsid"])) == len(lam)
    assert {f"{s}{c}.fits.gz" for s in gal["sobject_id"] for c in "1234"} == gal_files
    assert set(_s(obs["filename"])) == lam_files | gal_files
    # GALAH rows <-> truth reference stars, via observations
    go = obs[_s(obs["survey"]) == "galah"]
    ref_ids = set(truth["star_id"][truth["is_reference"]])
    assert set(go["star_id"]) == ref_ids
    # 2MASS-like star_id of GALAH is a sky position matching the truth position of that star
    sid_of = {int(s): int(t) for s, t in zip(go["sobject_id"], go["star_id"])}
    tr = {int(i): k for k, i in enumerate(truth["star_id"])}
    for row in gal:
        k = tr[sid_of[int(row["sobject_id"])]]
        assert abs(row["ra"] - truth["ra"][k]) < 1e-9 and abs(row["dec"] - truth["dec"][k]) < 1e-9
    # every star has exactly one Gaia row; sky positions agree
    assert len(gaia) == len(truth) and len(np.unique(gaia["source_id"])) == len(gaia)
    np.testing.assert_allclose(gaia["ra"], truth["ra"])
    # required GALAH DR3 columns
    for c in ["sobject_id", "star_id", "snr_c1_iraf", "snr_c4_iraf", "teff", "e_teff", "logg", "fe_h", "vmic", "vbroad",
              "mg_fe", "e_mg_fe", "flag_mg_fe", "eu_fe", "alpha_fe", "chi2_sp", "flag_sp"]:
        assert c in gal.colnames, c
    for c in ["obsid", "designation", "ra", "dec", "snrg", "snrz", "z", "rv", "teff", "logg", "feh", "filename", "lmjd"]:
        assert c in lam.colnames, c
    for c in ["parallax", "pmra_error", "radial_velocity", "phot_g_mean_mag", "r_est", "r_lo", "r_hi"]:
        assert c in gaia.colnames, c
    assert np.all(gaia["r_lo"] < gaia["r_est"]) and np.all(gaia["r_est"] < gaia["r_hi"])


def test_apogee_preset(mock_apogee):
    out, m = mock_apogee
    alls = Table.read(out / "apogee" / "allStar.fits")
    gal = Table.read(out / "galah" / "catalogue.fits")
    c = m["counts"]
    assert len(alls) == c["apogee_spectra"] == c["common"] + c["apogee_only"]
    assert len(gal) == c["reference_stars"] == c["common"] + c["galah_only"]
    assert c["common"] + c["apogee_only"] + c["galah_only"] == 25
    for c in ["APOGEE_ID", "FILE", "TEFF", "LOGG", "FE_H", "M_H", "ALPHA_M", "ALPHA_FE", "VMICRO", "VMACRO", "VSINI",
              "VBROAD", "TEFF_ERR", "FE_H_ERR", "ALPHA_M_ERR", "SNR", "NVISITS", "ASPCAPFLAG", "STARFLAG", "RA", "DEC",
              "MG_FE", "MN_FE"]:
        assert c in alls.colnames, c
    for c in ["sobject_id", "star_id", "ra", "dec", "snr_c1_iraf", "snr_c4_iraf", "teff", "logg", "fe_h", "alpha_fe",
              "vmic", "vbroad", "e_teff", "e_logg", "e_fe_h", "e_alpha_fe", "e_vmic", "e_vbroad", "flag_sp", "chi2_sp",
              "flag_alpha_fe"]:
        assert c in gal.colnames, c
    for row in alls[:5]:
        with fits.open(out / "apogee" / "spectra" / str(row["FILE"]).strip()) as h:
            nv = h[0].header["NVISITS"]
            assert h[1].data.shape == (2 + nv, 8575) == h[3].data.shape
            assert h[0].header["NVISITS"] == row["NVISITS"]
            gap = h[2].data[0] >= 1e9
            assert 0.05 < gap.mean() < 0.2 and np.all(h[3].data[0][gap] & 1)


# ----------------------------------------------------------------------------- truths
def test_population_truths():
    t = simulate_population(3000, seed=3)
    assert len(t) == 3000 and len(np.unique(t["star_id"])) == 3000
    assert set(t["population"]) == {"thin", "thick", "halo", "cluster"}
    ab = ["fe_h"] + [c for c in t.colnames if c.endswith("_fe")]
    for cid in np.unique(t["cluster_id"][t["cluster_id"] >= 0]):
        m = t[t["cluster_id"] == cid]
        assert len(m) >= 2
        for c in ab:
            assert np.ptp(m[c]) == 0.0, c  # chemically homogeneous
        assert np.std(m["vx"]) < 2.0 and np.std(m["vz"]) < 2.0  # shared kinematics
        assert np.std(m["x"]) < 0.02  # within tens of pc
        assert len(set(m["stage"])) >= 1
    bins = np.unique(t["binary_id"][t["binary_id"] >= 0])
    assert len(bins) > 20
    for bid in bins:
        m = t[t["binary_id"] == bid]
        assert len(m) == 2
        for c in ab:
            assert m[c][0] == m[c][1], c
        dv = np.sqrt((m["vx"][0] - m["vx"][1]) ** 2 + (m["vy"][0] - m["vy"][1]) ** 2 + (m["vz"][0] - m["vz"][1]) ** 2)
        dx = np.sqrt((m["x"][0] - m["x"][1]) ** 2 + (m["y"][0] - m["y"][1]) ** 2 + (m["z"][0] - m["z"][1]) ** 2)
        assert dv < 2.0 and dx < 0.2e-3 * 1.5  # < 0.3 pc
        assert abs(m["rv"][0] - m["rv"][1]) < 2.0
    # chemistry follows the components: thick disc and halo alpha-rich and metal-poor
    thin, thick, halo = (t[t["population"] == p] for p in ("thin", "thick", "halo"))
    assert np.median(thick["alpha_fe"]) > np.median(thin["alpha_fe"]) + 0.1
    assert np.median(halo["fe_h"]) < np.median(thick["fe_h"]) < np.median(thin["fe_h"])
    assert np.std(halo["vz"]) > 2 * np.std(thin["vz"])
    # O/Mg track alpha, Mn anti-correlates (as in APOGEE DR12)
    assert np.corrcoef(t["mg_fe"], t["alpha_fe"])[0, 1] > 0.8
    assert np.corrcoef(t["mn_fe"], t["alpha_fe"])[0, 1] < -0.3
    # Kiel diagram: dwarfs hotter-than-4000 and high gravity, giants low gravity
    assert np.all(t["logg"][t["stage"] == "dwarf"] > 4.0) and np.all(t["logg"][t["stage"] == "rgb"] < 3.6)


def test_corrupted_reference_labels(mock):
    out, _ = mock
    truth = Table.read(out / "truth" / "stars.fits")
    gal = Table.read(out / "galah" / "catalogue.fits")
    obs = Table.read(out / "truth" / "observations.fits")
    go = obs[(_s(obs["survey"]) == "galah") & (obs["ccd"] == 1)]
    star_of = dict(zip(go["sobject_id"], go["star_id"]))
    idx = {int(s): i for i, s in enumerate(truth["star_id"])}
    ref = truth[truth["is_reference"]]
    assert 1 <= ref["labels_corrupted"].sum() <= max(2, 0.1 * len(ref))
    assert not truth["labels_corrupted"][~truth["is_reference"]].any()
    cols = ["teff", "fe_h"] + [f"{x}_fe" for x in ("o", "na", "mg", "al", "si", "ca", "ti", "sc", "mn", "y", "ba", "eu")]
    for row in gal:
        t = truth[idx[int(star_of[int(row["sobject_id"])])]]
        # against the truth's own systematic and true error (the reported e_<label> are imperfect)
        z = max(abs(row[c] - t[c] - (t[f"ref_sys_{c}"] if c != "teff" else 0.0)) / t[f"ref_err_{c}"] for c in cols)
        if t["labels_corrupted"]:
            assert z > 3.5, (t["corruption"], z)  # badly wrong
        else:
            assert z < 6.0  # honest noise


def test_survey_systematics_follow_nandakumar():
    from cannonade.simulate.systematics import SurveySystematics, cross_survey_systematics

    t = simulate_population(4000, seed=8, stage_probs=(0.4, 0.1, 0.35, 0.15))
    rng = np.random.default_rng(0)
    snr = np.full(len(t), 200.0)
    apo_sys, gal_sys = cross_survey_systematics(t["teff"], t["logg"], SurveySystematics(), rng)
    gal, _ = cat.galah_labels(t, snr, rng, cross=gal_sys)
    apo = cat.apogee_labels(t, snr, rng, apo_sys)
    giant = t["logg"] < 3.5
    cool_giant = giant & (t["teff"] < 4400)
    d_fe = apo["FE_H"] - gal["fe_h"]
    assert np.median(d_fe[cool_giant]) > 0.25  # APOGEE higher for cool giants (Fig. 2c)
    assert abs(np.median(d_fe[~giant & (t["teff"] < 5600)])) < 0.05
    assert np.median((apo["TEFF"] - gal["teff"])[giant]) == pytest.approx(35, abs=15)
    vb = apo["VBROAD"] - gal["vbroad"]  # VMACRO (giants) or VSINI (dwarfs)
    assert np.median(vb) == pytest.approx(-2.8, abs=0.6)


def test_gaia_edsd_distance():
    plx = np.array([10.0, 1.0, 0.2, -0.1])
    sig = np.array([0.02, 0.02, 0.1, 0.2])
    r, lo, hi = cat.edsd_distance(plx, sig)
    np.testing.assert_allclose(r[:2], [0.1, 1.0], rtol=1e-3)  # precise parallaxes: 1/parallax
    assert np.all(np.isfinite(r)) and np.all(r > 0) and np.all(lo < r) and np.all(r < hi)


# ----------------------------------------------------------------------------- spectra physics
def _labels(**kw):
    n = max([len(np.atleast_1d(v)) for v in kw.values()] + [1])
    base = dict(teff=5777.0, logg=4.44, fe_h=0.0, vmic=1.0, vbroad=6.0)
    base.update(kw)
    return {k: np.broadcast_to(np.asarray(v, float), (n,)).copy() for k, v in base.items()}


def _ew(label_dict, name):
    from cannonade.spectra.linelists import STRONG_LINES

    wl = [s[2] for s in STRONG_LINES if s[0] == name][0]
    lines, ew, *_ = equivalent_widths(label_dict, "lamost")
    return ew[:, np.argmin(np.abs(lines.wl_air - wl))]


def test_curve_of_growth_and_sensitivities():
    # solar equivalent widths reproduced
    assert _ew(_labels(), "Mg I b1")[0] == pytest.approx(1.58, rel=0.02)
    # weak line: EW ∝ abundance; strong line: saturated (much less than linear)
    lines = line_list("lamost")
    fe = np.flatnonzero(~lines.strong & (lines.element == 0))
    weak = fe[np.argmin(lines.log_ew_sun[fe])]
    _, ew, *_ = equivalent_widths(_labels(fe_h=[-2.0, -1.0]), "lamost")
    assert ew[1, weak] / ew[0, weak] == pytest.approx(10.0, rel=0.1)
    b = _ew(_labels(mg_fe=[0.0, 0.5]), "Mg I b1")
    assert 1.0 < b[1] / b[0] < 10**0.5 * 0.8
    # microturbulence strengthens saturated lines
    v = _ew(_labels(vmic=[0.8, 2.0]), "Fe I 5270")
    assert v[1] > 1.05 * v[0]
    # gravity-sensitive wings: Mg b stronger in dwarfs than giants at fixed Teff
    g = _ew(_labels(teff=4800.0, logg=[2.5, 4.6]), "Mg I b1")
    assert g[1] > 1.5 * g[0]
    # Balmer lines stronger in hotter stars; TiO only in cool stars
    wl, m = normalised_model(_labels(teff=[4500.0, 6500.0, 3700.0], logg=[4.6, 4.2, 4.7]), "lamost")
    ha = (wl > 6555) & (wl < 6575)
    assert m[1, ha].min() < m[0, ha].min() - 0.1
    tio = (wl > 7060) & (wl < 7150)
    assert m[2, tio].mean() < 0.8 * m[0, tio].mean()


def test_model_is_not_a_low_order_polynomial():
    teff = np.linspace(4200, 6800, 27)
    _, m = normalised_model(_labels(teff=teff, logg=4.4), "lamost")
    x = (teff - teff.mean()) / teff.std()
    resid = []
    for p in range(0, m.shape[1], 7):
        c = np.polyfit(x, m[:, p], 2)
        resid.append(np.max(np.abs(np.polyval(c, x) - m[:, p])))
    # somewhere in the spectrum a quadratic in Teff misses the model by > 2 % flux
    assert np.max(resid) > 0.02


def test_rv_shift_is_applied():
    lab = _labels(teff=5200.0)
    wl, m0 = normalised_model(lab, "lamost", rv=0.0)
    _, m1 = normalised_model(lab, "lamost", rv=150.0)
    # log-linear grid: 150 km/s = log10(1.0005) / 1e-4 = 2.17 pixels
    a = 1 - m0[0]
    b = 1 - m1[0]
    lags = np.arange(-6, 7)
    cc = [np.sum(a[10:-10] * np.roll(b, -k)[10:-10]) for k in lags]
    assert lags[int(np.argmax(cc))] == 2


def test_synthesize_noise_and_normalised_variants():
    lab = _labels(teff=[5000.0, 6000.0])
    syn = synthesize(lab, "lamost", snr=[30.0, 100.0], seed=1)
    assert syn.flux.shape == (2, 3909) and syn.bad.any() is not None
    np.testing.assert_allclose(syn.snr, [30, 100], rtol=0.03)
    g = ~syn.bad
    pull = (syn.normalised_flux - syn.model) * np.sqrt(syn.normalised_ivar)
    assert np.std(pull[g]) == pytest.approx(1.0, abs=0.05)
    assert np.all(syn.ivar[syn.bad] == 0)
    wl, f, iv = synthesize_normalised(lab, "galah", snr=None)
    assert f.shape == (2, 4 * 4096) and np.all(f <= 1.0) and np.all(iv > 0)
    wl, f, iv = synthesize_normalised(lab, "apogee", snr=80, seed=2)
    assert f.shape == (2, 8575) and np.all(iv[:, wl < 15140] == 0)  # outside the chips
    # reproducible
    again = synthesize(lab, "lamost", snr=[30.0, 100.0], seed=1)
    assert np.array_equal(syn.flux, again.flux)


def test_cli_simulate(tmp_path, capsys):
    from cannonade.cli import main

    assert main(["simulate", "--preset", "lamost-galah", "--n-stars", "30", "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "manifest.json").is_file()
    assert "30 stars" in capsys.readouterr().out


def test_chunking_keeps_ids_unique(tmp_path):
    simulate_survey("lamost-galah", n_stars=130, seed=4, out=tmp_path / "ch", chunk_size=50)
    t = Table.read(tmp_path / "ch" / "truth" / "stars.fits")
    assert len(np.unique(t["star_id"])) == 130
    cl = t[t["cluster_id"] >= 0]
    for cid in np.unique(cl["cluster_id"]):
        assert np.ptp(cl["fe_h"][cl["cluster_id"] == cid]) == 0
    lam = Table.read(tmp_path / "ch" / "lamost" / "catalogue.fits")
    assert len(np.unique(lam["filename"])) == len(lam)


def test_bad_arguments(tmp_path):
    from cannonade.exceptions import ConfigError

    with pytest.raises(ConfigError, match="preset"):
        simulate_survey("sdss", 10, 0, tmp_path / "x")
    with pytest.raises(ConfigError, match="reference_fraction"):
        simulate_survey("lamost-galah", 10, 0, tmp_path / "x", reference_fraction=2.0)


# ----------------------------------------------------------------------------- realism vs real LAMOST DR1
def _normalise_envelope(flux, ivar):
    """Upper-envelope continuum: running 90th percentile (101 px) smoothed by a 15 px Gaussian."""
    from scipy.ndimage import gaussian_filter1d, percentile_filter

    out = np.empty_like(flux)
    good = (ivar > 0) & np.isfinite(flux)
    x = np.arange(flux.shape[1])
    for i in range(len(flux)):
        fi = np.interp(x, x[good[i]], flux[i][good[i]])
        c = gaussian_filter1d(percentile_filter(fi, 90, size=101, mode="nearest"), 15, mode="nearest")
        out[i] = fi / c
    return out, good


def _depth_and_scatter(wl, flux, ivar):
    """Per star: mean(1 - normalised flux) over 4000-8800 Å, and the robust per-pixel scatter
    (1.4826 MAD of first differences / sqrt 2) of the normalised flux there."""
    fn, good = _normalise_envelope(flux, ivar)
    sel = (wl > 4000) & (wl < 8800)
    depth, scat = [], []
    for i in range(len(fn)):
        g = good[i] & sel
        depth.append(np.mean(1 - fn[i][g]))
        d = np.diff(fn[i])[g[1:] & g[:-1]]
        scat.append(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))
    return np.array(depth), np.array(scat)


def test_realism_against_real_lamost_dr1(shared_data):
    import pandas as pd

    d = shared_data / "lamost_dr1"
    catl = pd.read_csv(d / "lasp_catalog.csv")
    catl = catl[(catl.teff > 0) & (catl.snrg > 0)]
    flux, ivar = [], []
    for f in catl.filename:
        with fits.open(d / "spectra" / f) as h:
            data = h[0].data[:, :3904].astype(float)
            c0, c1 = h[0].header["COEFF0"], h[0].header["COEFF1"]
        flux.append(data[0])
        ivar.append(data[1])
    wl = 10 ** (c0 + c1 * np.arange(3904))
    dr, sr = _depth_and_scatter(wl, np.array(flux), np.array(ivar))
    # the mock at the same S/N, stellar labels and RVs as the real stars
    syn = synthesize({"teff": catl.teff.values, "logg": catl.logg.values, "fe_h": catl.feh.values}, "lamost",
                     snr=catl.snrg.values, rv=catl.rv.values, seed=1, calib_scale=0.04)
    dm, sm = _depth_and_scatter(syn.wavelength, syn.flux, syn.ivar)
    for real, mock_ in ((dr, dm), (sr, sm)):
        for q in (25, 50, 75):
            ratio = np.percentile(mock_, q) / np.percentile(real, q)
            assert 0.5 < ratio < 2.0, (q, ratio)
