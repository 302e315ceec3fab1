"""Rest frame, variance-propagating resampling and continuum normalisation: known-truth recovery."""

import numpy as np
import pytest

from cannonade.exceptions import ConfigError, ShapeError
from cannonade.spectra.readers import Spectrum, read_spectrum
from cannonade.spectra.preprocessing import (
    continuum_chebyshev,
    continuum_chebyshev_batch,
    continuum_gaussian,
    continuum_gaussian_batch,
    doppler_shift,
    gaussian_kernel_matrix,
    normalise,
    normalise_batch,
    pixel_edges,
    prepare_spectrum,
    resample,
    resample_batch,
    resampling_matrix,
)
from cannonade.spectra.surveys import common_grid, detector_regions, grid_key, log_lambda_grid

C = 299792.458


def _lines(wave, centres, depths, widths):
    """Gaussian absorption profile (1 - sum of Gaussians)."""
    prof = np.ones_like(wave)
    for c, d, w in zip(centres, depths, widths):
        prof -= d * np.exp(-0.5 * ((wave - c) / w) ** 2)
    return prof


def test_doppler_shift():
    w = np.array([5000.0, 6000.0])
    np.testing.assert_allclose(doppler_shift(w, 1e-3), w / 1.001)
    np.testing.assert_array_equal(doppler_shift(w, np.nan), w)
    np.testing.assert_array_equal(doppler_shift(w, None), w)
    with pytest.raises(ConfigError):
        doppler_shift(w, -1.5)


def _spy_on(monkeypatch, owner, name):
    """Record the calls of ``owner.name`` (still made) for the test's duration: (calls, the original)."""
    calls, real = [], getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls, real


def test_grids():
    lam = common_grid("lamost")
    assert lam.size == 3900 and 3699 < lam[0] < 3701 and 9070 < lam[-1] < 9090
    np.testing.assert_allclose(np.diff(np.log10(lam)), 1e-4, rtol=1e-8)
    apo = common_grid("apogee")
    assert apo.size == 8575 and 15100 < apo[0] < 15102 and 16998 < apo[-1] < 17001
    gal = common_grid("galah")
    assert np.all(np.diff(gal) > 0) and len(detector_regions("galah")) == 4
    for lo, hi in detector_regions("galah"):
        assert ((gal > lo) & (gal < hi)).sum() > 3500
    custom = common_grid("4000:5000:101")
    np.testing.assert_allclose(custom, log_lambda_grid(4000, 5000, 101))
    with pytest.raises(ConfigError):
        common_grid("nonsense")


def test_grid_key_is_the_same_for_equal_grids_whatever_holds_them():
    lam = common_grid("lamost")
    key, w = grid_key(lam)
    assert w is lam  # already contiguous float64: hashed as it is, not copied
    strided = np.repeat(lam, 2)[::2]
    assert not strided.flags.c_contiguous
    key2, w2 = grid_key(strided)
    assert key2 == key and w2.flags.c_contiguous and w2.dtype == np.float64
    assert grid_key(lam.tolist())[0] == key
    assert key[:3] == (3900, float(lam[0]), float(lam[-1]))
    moved = lam.copy()
    moved[1950] = np.nextafter(moved[1950], np.inf)  # one pixel, one ulp: the ends and size agree
    assert grid_key(moved)[0] != key
    assert grid_key(common_grid("apogee"))[0] != key
    # float32 and float64 holders of the same values are one grid
    g32 = lam.astype(np.float32)
    assert grid_key(g32)[0] == grid_key(g32.astype(np.float64))[0]


def test_pixel_edges_respect_gaps():
    w = np.concatenate([np.arange(100.0, 110.0), np.arange(200.0, 210.0)])
    lo, hi = pixel_edges(w)
    np.testing.assert_allclose(hi - lo, 1.0)  # the pixel either side of the gap is not stretched
    assert np.all(lo[1:] >= hi[:-1] - 1e-12)


def test_pixel_edges_without_gaps_are_the_midpoints():
    """A grid without gaps (a survey's, one row or many): every edge half way between neighbouring
    centres, the end pixels mirrored, bit for bit; one gap in one row of a batch is still kept."""
    rng = np.random.default_rng(4)
    rows = 4000 * 10 ** (1e-4 * np.arange(300))[None, :] * rng.uniform(0.999, 1.001, (3, 1))  # no gap
    for w in (rows, rows[0]):
        lo, hi = pixel_edges(w)
        d = np.diff(w, axis=-1)
        np.testing.assert_array_equal(lo[..., 1:], w[..., 1:] - 0.5 * d)
        np.testing.assert_array_equal(hi[..., :-1], w[..., :-1] + 0.5 * d)
        np.testing.assert_array_equal(lo[..., 0], w[..., 0] - 0.5 * d[..., 0])
        np.testing.assert_array_equal(hi[..., -1], w[..., -1] + 0.5 * d[..., -1])
    gap = rows.copy()
    gap[1, 150:] += 50.0
    lo, hi = pixel_edges(gap)
    np.testing.assert_array_equal(lo[[0, 2]], pixel_edges(rows)[0][[0, 2]])
    assert hi[1, 149] - lo[1, 149] < 1.0 and lo[1, 150] > hi[1, 149] + 40  # the gap is not spanned


def test_resample_identity_and_flux_conservation():
    rng = np.random.default_rng(0)
    w = log_lambda_grid(5000, 5500, 800)
    f = 1 + 0.1 * rng.normal(size=w.size)
    iv = rng.uniform(50, 100, w.size)
    f2, iv2 = resample(w, f, iv, w)
    np.testing.assert_allclose(f2, f, rtol=1e-9)
    np.testing.assert_allclose(iv2, iv, rtol=1e-9)
    # coarser grid inside the input: integral of f dlambda is conserved
    new = log_lambda_grid(5010, 5490, 300)
    R, cov = resampling_matrix(w, new)
    assert np.all(cov > 1 - 1e-9)
    f3, _ = resample(w, f, iv, new)
    lo, hi = pixel_edges(w)
    nlo, nhi = pixel_edges(new)
    inside = (lo >= nlo[0]) & (hi <= nhi[-1])
    partial = ~inside & (hi > nlo[0]) & (lo < nhi[-1])
    total_in = np.sum((f * (hi - lo))[inside])
    total_in += sum(f[i] * (min(hi[i], nhi[-1]) - max(lo[i], nlo[0])) for i in np.flatnonzero(partial))
    assert np.sum(f3 * (nhi - nlo)) == pytest.approx(total_in, rel=1e-10)


def test_resample_marks_bad_and_out_of_range():
    w = log_lambda_grid(5000, 5100, 200)
    f = np.ones(w.size)
    iv = np.ones(w.size)
    iv[100] = 0
    f[100] = np.nan
    new = log_lambda_grid(4990, 5110, 150)  # overhangs both ends
    f2, iv2 = resample(w, f, iv, new)
    lo, hi = pixel_edges(w)
    nlo, nhi = pixel_edges(new)
    touches_bad = (nhi > lo[100]) & (nlo < hi[100])
    outside = (nlo < lo[0]) | (nhi > hi[-1])
    assert touches_bad.sum() in (1, 2)
    np.testing.assert_array_equal(iv2 == 0, touches_bad | outside)
    assert np.all(np.isnan(f2[iv2 == 0]))
    np.testing.assert_allclose(f2[iv2 > 0], 1.0)


def test_resampled_variance_monte_carlo():
    """Empirical variance of resampled noise == propagated variance (within ~5 %)."""
    rng = np.random.default_rng(42)
    w = log_lambda_grid(6000, 6100, 500)
    sigma = 0.05 * (1 + 0.5 * np.sin(w / 3.0))
    new = log_lambda_grid(6005, 6095, 173)  # incommensurate, coarser grid
    n_real = 20000
    noise = rng.normal(size=(n_real, w.size)) * sigma
    ivar = np.broadcast_to(1 / sigma**2, noise.shape)
    f2, iv2 = resample_batch(w, noise, ivar, new)
    assert np.all(iv2 > 0) and np.allclose(iv2, iv2[0])
    ratio = f2.var(axis=0) * iv2[0]
    assert abs(ratio.mean() - 1) < 0.01
    assert np.max(np.abs(ratio - 1)) < 0.06
    # finer grid too (output pixels share input pixels)
    fine = log_lambda_grid(6005, 6095, 900)
    f3, iv3 = resample_batch(w, noise[:8000], ivar[:8000], fine)
    r3 = f3.var(axis=0) * iv3[0]
    assert abs(r3.mean() - 1) < 0.015 and np.max(np.abs(r3 - 1)) < 0.07


def test_redshift_resample_keeps_line_centres_and_equivalent_widths():
    z = 8e-4  # 240 km/s
    rest_centres = np.array([4861.35, 5183.60, 5895.92, 6564.61, 8544.44])
    widths = np.array([4.0, 2.5, 2.0, 5.0, 2.2])
    depths = np.array([0.6, 0.4, 0.5, 0.7, 0.45])
    obs = 10 ** (3.5682 + 1e-4 * np.arange(3909))  # LAMOST DR1 pixels
    flux = _lines(obs / (1 + z), rest_centres, depths, widths)
    spec = Spectrum(obs, flux, np.full(obs.size, 1e4), {"redshift": z})
    grid = common_grid("4000:9000:5000")  # a different, incommensurate log grid
    f, iv = prepare_spectrum(spec, grid, normalise="none")
    assert np.all(iv[(grid > 3800) & (grid < 8990)] > 0)
    lo, hi = pixel_edges(grid)
    dl = hi - lo
    for c, d, w in zip(rest_centres, depths, widths):
        win = np.abs(grid - c) < 8 * w
        ew = np.sum((1 - f[win]) * dl[win])
        ew_true = d * w * np.sqrt(2 * np.pi)
        assert abs(ew / ew_true - 1) < 0.01, (c, ew, ew_true)
        centre = np.sum(grid[win] * (1 - f[win]) * dl[win]) / ew
        assert abs(centre - c) < 0.02 * np.mean(dl[win]) + 0.05, (c, centre)
    # without the shift the centres are off by c z (~4 A at 5000 A)
    f0, _ = prepare_spectrum(spec, grid, z=np.nan, normalise="none")
    win = np.abs(grid - 5183.6) < 20
    c0 = np.sum(grid[win] * (1 - f0[win])) / np.sum(1 - f0[win])
    assert c0 - 5183.6 == pytest.approx(5183.6 * z, rel=0.05)


def _smooth_continuum(w):
    x = (w - 6300) / 2700
    return 1000 * (1 + 0.25 * x - 0.15 * x**2 + 0.03 * x**3)  # x2 from 3700 to 9000 A


def test_gaussian_continuum_recovers_smooth_continuum():
    """< 1 % under absorption lines (away from the 150 A edges).

    The smoothing is biased low by ~EW / (sqrt(2 pi) 50 A) per line inside the
    kernel (0.1-0.3 % each here) and by ~2 sigma^2 (C'/C)^2 from the ivar weights
    varying across the kernel; both stay below 1 % for these sparse lines.
    """
    rng = np.random.default_rng(0)
    w = common_grid("lamost")
    cont = _smooth_continuum(w)
    centres = rng.uniform(3750, 9050, 30)
    prof = _lines(w, centres, rng.uniform(0.05, 0.25, 30), rng.uniform(0.5, 1.0, 30))  # ~1 line per 180 A
    ivar = 1 / (cont / 200) ** 2
    flux = cont * prof + rng.normal(size=w.size) * cont / 200
    ivar[500:520] = 0  # bad pixels with garbage flux must not matter
    flux[500:520] = 1e6
    est = continuum_gaussian(w, flux, ivar)
    inner = (w > w[0] + 150) & (w < w[-1] - 150)
    err = est[inner] / cont[inner] - 1
    assert np.max(np.abs(err)) < 0.01 and np.mean(np.abs(err)) < 0.005
    nf, niv = normalise(w, flux, ivar, method="gaussian")
    np.testing.assert_allclose(niv, ivar * est**2)
    np.testing.assert_allclose(nf, flux / est)
    assert abs(np.sum(nf[inner] * niv[inner]) / np.sum(niv[inner]) - np.mean(prof[inner])) < 0.01


def test_gaussian_continuum_exact_kernel():
    rng = np.random.default_rng(2)
    w = log_lambda_grid(5000, 5600, 300)
    f = rng.normal(10, 1, w.size)
    iv = rng.uniform(0.5, 2, w.size)
    K = np.exp(-0.5 * ((w[:, None] - w[None, :]) / 50.0) ** 2) * (np.abs(w[:, None] - w[None, :]) <= 150)
    expected = (K @ (iv * f)) / (K @ iv)  # Wheeler+2020 / Ho+2017
    np.testing.assert_allclose(continuum_gaussian(w, f, iv), expected, rtol=1e-12)
    np.testing.assert_allclose(gaussian_kernel_matrix(w).toarray(), K, rtol=1e-12)
    batch = continuum_gaussian_batch(w, np.stack([f, 2 * f]), np.stack([iv, iv]))
    np.testing.assert_allclose(batch[1], 2 * expected, rtol=1e-12)


def test_chebyshev_continuum_per_region():
    rng = np.random.default_rng(3)
    # two detectors with different throughput (a step between them), lines, noise
    w = np.concatenate([log_lambda_grid(15100, 15800, 2500), log_lambda_grid(15860, 16430, 2000)])
    cont = np.where(w < 15830, 800 * (1 + 1e-4 * (w - 15100)), 500 * (1 - 2e-4 * (w - 15860)))
    centres = rng.uniform(15100, 16430, 120)
    prof = _lines(w, centres, rng.uniform(0.05, 0.4, 120), rng.uniform(0.3, 0.8, 120))
    sigma = cont / 150
    flux = cont * prof + rng.normal(size=w.size) * sigma
    ivar = 1 / sigma**2
    regions = [(15090, 15830), (15830, 16440)]
    est = continuum_chebyshev(w, flux, ivar, regions=regions, degree=3)
    assert np.max(np.abs(est / cont - 1)) < 0.01
    # default regions = the contiguous pieces (split at the gap) give the same
    np.testing.assert_allclose(continuum_chebyshev(w, flux, ivar, degree=3), est, rtol=1e-10)
    # without clipping the lines pull the continuum down
    plain = continuum_chebyshev(w, flux, ivar, regions=regions, degree=3, n_iter=0)
    assert np.mean(plain / cont) < np.mean(est / cont) - 0.005
    nf, niv = normalise(w, flux, ivar, method="chebyshev", regions=regions, degree=3)
    np.testing.assert_allclose(niv, ivar * est**2)


def _chebyshev_one_by_one(w, flux, ivar, regions, degree, n_iter=5, low=2.0, high=3.0):
    """The clipped Chebyshev continuum as docs/spectra.md states it, one spectrum, region and
    iteration at a time with numpy's least squares (the reference for the batched fits)."""
    usable = (ivar > 0) & np.isfinite(ivar) & np.isfinite(flux)
    cont = np.full(w.shape, np.nan)
    for lo, hi in regions:
        sel = (w >= lo) & (w <= hi)
        x = 2.0 * (w[sel] - w[sel].min()) / (w[sel].max() - w[sel].min()) - 1.0
        V = np.polynomial.chebyshev.chebvander(x, degree)
        f, iv, ok = np.where(usable, flux, 0.0)[sel], np.where(usable, ivar, 0.0)[sel], usable[sel]
        keep, coef = ok.copy(), None
        for _ in range(n_iter + 1):
            if keep.sum() < degree + 2:
                coef = None
                break
            sw = np.sqrt(iv[keep])
            coef = np.linalg.lstsq(V[keep] * sw[:, None], f[keep] * sw, rcond=None)[0]
            z = (f - V @ coef) * np.sqrt(iv)
            s = np.sqrt(np.mean(z[keep] ** 2))
            new_keep = ok & (z > -low * s) & (z < high * s)
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
        if coef is not None:
            cont[sel] = V @ coef
    return cont


def test_chebyshev_batch_equals_one_spectrum_at_a_time():
    """Lock-step clipped fits of many spectra = each spectrum's own fit: different S/N, lines, bad
    pixels, a region with too few good pixels (NaN there only), a spectrum with none at all, a
    region clipped below the minimum after its first fit."""
    rng = np.random.default_rng(11)
    w = np.concatenate([log_lambda_grid(15100, 15800, 1500), log_lambda_grid(15860, 16430, 1200)])
    regions = [(15090, 15830), (15830, 16440)]
    n = 40
    cont = 600 * (1 + rng.uniform(-3e-4, 3e-4, (n, 1)) * (w - 15800))
    prof = np.stack([_lines(w, rng.uniform(15100, 16430, 80), rng.uniform(0.05, 0.5, 80), rng.uniform(0.3, 0.8, 80))
                     for _ in range(n)])
    sigma = cont / rng.uniform(20, 300, (n, 1))
    flux = cont * prof + rng.normal(size=(n, w.size)) * sigma
    ivar = 1 / sigma**2
    ivar[3, rng.choice(w.size, 500, replace=False)] = 0
    ivar[5, :1500] = 0  # nothing in the first region
    ivar[5, 1500:1502] = 1.0  # two good pixels there: fewer than degree + 2 = 5
    ivar[6] = 0  # no good pixel at all
    flux[7, 10] = np.nan
    flux[8, 1500:] = 0.0  # a dead fibre in the second region: the exact fit leaves s = 0, every pixel is clipped,
    # and the next iteration has too few pixels: NaN there, though the first iteration had a fit
    batch = continuum_chebyshev_batch(w, flux, ivar, regions=regions, degree=3)
    for k in range(n):
        ref = _chebyshev_one_by_one(w, flux[k], ivar[k], regions, 3)
        np.testing.assert_array_equal(np.isfinite(batch[k]), np.isfinite(ref), err_msg=f"spectrum {k}")
        np.testing.assert_allclose(batch[k], ref, rtol=1e-9, err_msg=f"spectrum {k}")
        np.testing.assert_allclose(continuum_chebyshev(w, flux[k], ivar[k], regions=regions, degree=3), batch[k], rtol=1e-12)
    assert np.all(np.isnan(batch[5, :1500])) and np.all(np.isfinite(batch[5, 1500:]))
    assert np.all(np.isnan(batch[6]))
    assert np.all(np.isnan(batch[8, 1500:])) and np.all(np.isfinite(batch[8, :1500]))
    good = np.isfinite(batch).all(axis=1)
    assert np.max(np.abs(batch[good] / cont[good] - 1)) < 0.03  # the clipped fit finds the continuum under the lines
    assert continuum_chebyshev_batch(w, flux[:0], ivar[:0], regions=regions).shape == (0, w.size)


def test_normalise_batch_matches_single_and_none():
    rng = np.random.default_rng(4)
    w = common_grid("lamost")
    F = rng.uniform(50, 60, (3, w.size))
    IV = rng.uniform(0.1, 1, (3, w.size))
    IV[1, 100:200] = 0
    for method, kw in (("gaussian", {}), ("chebyshev", {"degree": 3})):
        nf, niv = normalise_batch(w, F, IV, method=method, **kw)
        for k in range(3):
            a, b = normalise(w, F[k], IV[k], method=method, **kw)
            np.testing.assert_allclose(nf[k], a, rtol=1e-10)
            np.testing.assert_allclose(niv[k], b, rtol=1e-10)
    nf, niv = normalise_batch(w, F, IV, method="none")
    np.testing.assert_array_equal(nf, F)
    with pytest.raises(ConfigError):
        normalise(w, F[0], IV[0], method="median")
    with pytest.raises(ShapeError):
        continuum_gaussian(w[:10], F[0], IV[0])


def test_prepare_real_lamost(shared_data):
    f = sorted((shared_data / "lamost_dr1" / "spectra").glob("*.fits"))[0]
    s = read_spectrum(f)
    grid = common_grid("lamost")
    nf, niv = prepare_spectrum(s, grid)
    assert nf.shape == niv.shape == grid.shape
    good = niv > 0
    assert good.mean() > 0.85
    assert 0.9 < np.sum(nf[good] * niv[good]) / np.sum(niv[good]) < 1.05
    # default z is the header's Z; NaN means no shift
    a, _ = prepare_spectrum(s, grid, z=s.meta["redshift"])
    np.testing.assert_array_equal(np.isnan(a), np.isnan(nf))
    np.testing.assert_allclose(a[good], nf[good])
    b, _ = prepare_spectrum(s, grid, z=np.nan)
    c, _ = prepare_spectrum(s, grid, z=0.0)
    np.testing.assert_allclose(b[good & ~np.isnan(b)], c[good & ~np.isnan(b)])
    assert not np.allclose(b[good & ~np.isnan(b)], nf[good & ~np.isnan(b)])


def test_gaussian_continuum_dense_blocks_equal_the_sparse_kernel():
    """On the LAMOST grid the kernel is applied as dense row blocks (BLAS); on a fine grid the
    blocks are too wide to keep dense (only factored). Either way the continuum is Eq. (Ho+2017)
    with the exact kernel, to rounding."""
    from cannonade.spectra.preprocessing import gaussian_kernel_blocks

    rng = np.random.default_rng(5)
    w = common_grid("lamost")
    blocks = gaussian_kernel_blocks(w)
    assert blocks is not None and blocks[0][0] == 0 and blocks[-1][1] == w.size
    assert all(b[1] == a[0] for b, a in zip(blocks, blocks[1:]))  # rows tile the grid
    f = rng.normal(10, 1, (3, w.size))
    iv = rng.uniform(0.5, 2, f.shape)
    iv[:, rng.random(w.size) < 0.05] = 0.0
    f[0, 100] = np.nan  # a NaN flux is a bad pixel
    K = gaussian_kernel_matrix(w)
    good = (iv > 0) & np.isfinite(f)
    wt = np.where(good, iv, 0.0)
    expected = (K @ (wt * np.where(good, f, 0.0)).T).T / (K @ wt.T).T
    np.testing.assert_allclose(continuum_gaussian_batch(w, f, iv), expected, rtol=1e-12)
    apogee = common_grid("apogee")  # chip gaps, ~0.2 A pixels: wide blocks, factored cores
    fa = rng.normal(10, 1, (2, apogee.size))
    Ka = gaussian_kernel_matrix(apogee)
    np.testing.assert_allclose(continuum_gaussian_batch(apogee, fa, np.ones_like(fa)), (Ka @ fa.T).T / np.asarray(Ka.sum(1)).ravel(),
                               rtol=1e-12)
    fine = log_lambda_grid(4700, 4740, 2500)  # ~0.016 A pixels: a block would span all 2500 columns
    assert gaussian_kernel_blocks(fine) is None
    g = rng.normal(10, 1, fine.size)
    Kf = gaussian_kernel_matrix(fine)
    np.testing.assert_allclose(continuum_gaussian(fine, g, np.ones_like(g)), (Kf @ g) / np.asarray(Kf.sum(1)).ravel(),
                               rtol=1e-12)


def test_gaussian_continuum_on_fine_grids_is_factored_not_sparse(monkeypatch):
    """GALAH's 0.05 A pixels put ~6 600 columns under the 150 A truncation: each block of rows is
    factored (low-rank core, dense ragged edges) instead of applying the sparse kernel, also
    across the ~700 A gaps between CCDs (no block straddles one); the continuum equals the
    sparse kernel's to 1e-13. A kernel whose wide blocks do not factor (sigma far below the
    truncation: most of each block underflows to 0) falls back to the sparse kernel."""
    from cannonade.spectra import continuum as continuum_module

    rng = np.random.default_rng(11)
    galah = common_grid("galah")
    lo, hi = detector_regions("galah")[1]
    region = galah[(galah >= lo) & (galah <= hi)]
    two = np.concatenate([log_lambda_grid(5000, 5200, 3000), log_lambda_grid(5600, 5700, 1500)])  # a 400 A gap
    expected = {}
    for name, w in (("galah", galah), ("region", region), ("two", two)):
        f = rng.normal(1.0, 0.05, (3, w.size))
        iv = rng.uniform(100, 400, f.shape)
        iv[:, rng.random(w.size) < 0.03] = 0.0
        iv[1, : w.size // 3] = 0.0  # a third of a row without good pixels
        K = gaussian_kernel_matrix(w)
        wt = np.where(iv > 0, iv, 0.0)
        with np.errstate(invalid="ignore"):
            expected[name] = (w, f, iv, (K @ (wt * f).T).T / (K @ wt.T).T)

    def no_sparse(*args, **kwargs):
        raise AssertionError("the sparse kernel was built")

    monkeypatch.setattr(continuum_module, "gaussian_kernel_matrix", no_sparse)
    for name, (w, f, iv, ref) in expected.items():
        got = continuum_gaussian_batch(w, f, iv)
        assert np.array_equal(np.isnan(got), np.isnan(ref)), name
        ok = ~np.isnan(ref)
        np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-13, atol=0, err_msg=name)
    monkeypatch.undo()

    calls, real = _spy_on(monkeypatch, continuum_module, "gaussian_kernel_matrix")
    w, f, iv, _ = expected["region"]
    got = continuum_gaussian_batch(w, f, iv, sigma=0.3, truncate=150.0)
    assert calls  # not factored: the sparse kernel
    K = real(w, 0.3, 150.0)
    wt = np.where(iv > 0, iv, 0.0)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got, (K @ (wt * f).T).T / (K @ wt.T).T, rtol=1e-13, equal_nan=True)


@pytest.mark.parametrize("seed", range(4))
def test_resampling_without_entry_lists_gives_the_same_bits(seed, monkeypatch):
    """resample() sums each output pixel's overlaps in place when few inputs overlap it; the result
    is bit for bit that of the explicit sparse entries (the fallback for much coarser outputs)."""
    from cannonade.spectra import resampling

    rng = np.random.default_rng(seed)
    for _ in range(50):
        w = np.unique(rng.uniform(4000, 4100, rng.integers(5, 300)))
        nw = np.unique(rng.uniform(3990, 4110, rng.integers(3, 300)))
        f = rng.normal(size=w.size)
        iv = rng.uniform(0, 1, w.size)
        iv[rng.random(w.size) < 0.1] = 0.0
        monkeypatch.setattr(resampling, "_MAX_OVERLAPS", 10**6)
        fast = resample(w, f, iv, nw)
        monkeypatch.setattr(resampling, "_MAX_OVERLAPS", 0)
        entries = resample(w, f, iv, nw)
        assert np.array_equal(fast[0], entries[0], equal_nan=True) and np.array_equal(fast[1], entries[1])


def test_resample_batch_rest_frames_equal_resample_of_each():
    """One pass over many rest frames gives resample()'s numbers bit for bit (bad pixels, edges, gaps)."""
    rng = np.random.default_rng(7)
    grid = common_grid("lamost")
    n, npix = 40, 3909
    z = rng.uniform(-1.5e-3, 1.5e-3, n)  # up to ~6 pixels: some outputs fall off either end
    wave = 10 ** (3.5682 + 1e-4 * np.arange(npix))[None, :] / (1 + z[:, None])
    flux = 1 + 0.1 * rng.normal(size=(n, npix))
    ivar = rng.uniform(10, 100, (n, npix))
    ivar[rng.random((n, npix)) < 0.02] = 0.0
    flux[3, 100:110] = np.nan
    f, iv = resample_batch(wave, flux, ivar, grid)
    for k in range(n):
        fk, ik = resample(wave[k], flux[k], ivar[k], grid)
        np.testing.assert_array_equal(f[k], fk)
        np.testing.assert_array_equal(iv[k], ik)
    assert np.all(iv[3][(grid > wave[3, 99]) & (grid < wave[3, 110])] == 0)
    # a coarser output grid (several inputs per output pixel) and a finer one
    for new in (log_lambda_grid(4000, 8000, 700), log_lambda_grid(5000, 5100, 900)):
        f, iv = resample_batch(wave[:5], flux[:5], ivar[:5], new)
        for k in range(5):
            fk, ik = resample(wave[k], flux[k], ivar[k], new)
            np.testing.assert_array_equal(f[k], fk)
            np.testing.assert_array_equal(iv[k], ik)


def test_shifted_rows_resample_as_the_searched_entries(monkeypatch):
    """Rows on the output grid's log step overlap it with one shifted pattern and are resampled from
    windows; they, and rows that break the pattern (another step, a moved pixel, a gap), give the
    sparse entries' numbers bit for bit, including output pixels off either end of a spectrum."""
    from cannonade.spectra import resampling
    from cannonade.spectra.resampling import shifted_rows

    rng = np.random.default_rng(11)
    grid = common_grid("lamost")
    n, npix = 24, 3909
    z = rng.uniform(1e-4, 1.5e-3, n)  # the grid inside each spectrum, pixels not aligned
    z[0] = -1e-3  # the first ~4 output pixels before the spectrum: not one pattern
    wave = 10 ** (3.5682 + 1e-4 * np.arange(npix))[None, :] / (1 + z[:, None])
    wave[1] = 10 ** (3.5682 + 1.02e-4 * np.arange(npix))  # another log step
    wave[2, 2000] = 0.5 * (wave[2, 2000] + wave[2, 2001])  # one pixel moved: the pattern breaks there
    wave[3, 1500:] += 30.0  # a gap
    wave[4] = 10 ** (3.575 + 1e-4 * np.arange(npix))  # starts ~40 pixels after the grid
    flux = 1 + 0.1 * rng.normal(size=(n, npix))
    ivar = rng.uniform(10, 100, (n, npix))
    ivar[rng.random((n, npix)) < 0.02] = 0.0
    flux[5, 0:20] = np.nan
    lo, hi = pixel_edges(wave)
    nlo, nhi = pixel_edges(grid)
    ok, s, width = shifted_rows(*resampling._pad_edges(lo, hi), nlo, nhi)
    assert width == 2 and not ok[:5].any() and ok[5:].all()
    monkeypatch.setattr(resampling, "log_step", lambda grid: None)  # no geometric rows: the windows
    f, iv = resample_batch(wave, flux, ivar, grid)
    monkeypatch.setattr(resampling, "_MAX_OVERLAPS", 0)  # every row through the sparse entries
    for k in range(n):
        fk, ik = resample(wave[k], flux[k], ivar[k], grid)
        assert np.array_equal(f[k], fk, equal_nan=True) and np.array_equal(iv[k], ik), k
    assert np.all(iv[4, grid < wave[4, 0]] == 0) and np.all(iv[5, grid < wave[5, 19]] == 0) and iv[0, 0] == 0


def test_geometric_rows_resample_as_the_searched_entries(monkeypatch):
    """Rows on the output grid's log step (whatever their shift, even off either end of the grid)
    are summed with constant weights and give the search's numbers to round-off: the same good
    pixels, flux within 1e-10 of the row's scale, ivar within 1e-10; the end pixels are summed from
    their own overlaps (the first input's edge is not half way to a neighbour)."""
    from cannonade.spectra import resampling

    rng = np.random.default_rng(5)
    grid = common_grid("lamost")
    step = resampling.log_step(grid)
    assert step == pytest.approx(1e-4 * np.log(10), rel=1e-9)
    assert resampling.log_step(np.linspace(4000, 5000, 100)) is None  # a linear grid
    assert all(resampling.log_step(g) is None for g in (np.zeros(0), np.ones(1), np.ones((2, 3)), -grid[::-1]))
    n, npix = 30, 3909
    d = rng.uniform(-9, 9, n)  # input pixel 0 at output pixel d: shifts of up to 9 pixels either way
    d[:4] = [0.0, 3.0, -15.0, 3 + 1e-5]  # aligned, whole pixels, the first input just past output pixel 3
    d[4] = 40.3  # starts 40 pixels into the grid
    d[11], d[12] = 3895.5, -6000.0  # overlaps the grid's last 4 pixels (searched); off the grid
    wave = grid[0] * np.exp(step * (np.arange(npix) + d[:, None]))
    wave[5] = 10 ** (3.5682 + 1e-4 * np.arange(npix)) / (1 + 1.2e-3)  # a LAMOST file's own grid, redshifted
    wave[6] = 10 ** (3.5682 + 1.02e-4 * np.arange(npix))  # another log step: searched
    wave[7, 2000] = 0.5 * (wave[7, 2000] + wave[7, 2001])  # a moved pixel: searched
    wave[8, 1500:] += 30.0  # a gap: searched
    flux = 1 + 0.1 * rng.normal(size=(n, npix))
    ivar = rng.uniform(10, 100, (n, npix))
    ivar[rng.random((n, npix)) < 0.02] = 0.0
    ivar[9, [0, -1]] = 0.0  # bad first and last inputs
    ivar[3, :3] = 50.0
    flux[10, :15] = np.nan
    geo, _ = resampling.geometric_rows(wave, step)
    assert geo[[0, 1, 2, 3, 4, 5]].all() and not geo[[6, 7, 8]].any() and geo[9:].all()
    assert not resampling.geometric_rows(wave[:2, :0], step)[0].any()
    with pytest.raises(ShapeError, match="one row per spectrum"):
        resampling.geometric_rows(wave[0], step)
    part, _ = resampling._geometric_part(wave, grid, *pixel_edges(grid), flux, ivar, ivar == 0)
    assert set(part) == set(range(n)) - {6, 7, 8, 11, 12}  # too little overlap: searched
    f, iv = resample_batch(wave, flux, ivar, grid)
    empty = resample_batch(wave[:0], flux[:0], ivar[:0], grid)
    assert empty[0].shape == empty[1].shape == (0, grid.size)
    monkeypatch.setattr(resampling, "log_step", lambda grid: None)
    fs, ivs = resample_batch(wave, flux, ivar, grid)
    np.testing.assert_array_equal(np.isnan(f), np.isnan(fs))
    np.testing.assert_array_equal(iv > 0, ivs > 0)
    scale = np.nanmax(np.abs(flux), axis=1, keepdims=True)
    assert np.nanmax(np.abs(f - fs) / scale) < 1e-10
    assert np.max(np.abs(iv - ivs) / np.where(ivs > 0, ivs, 1.0)) < 1e-10
    # what the end pixels look like: aligned rows reproduce their inputs; off-grid pixels are bad
    for k, shift in ((0, 0), (1, 3)):  # whole-pixel shifts: each good output pixel is its input
        good = iv[k] > 0
        assert good.sum() > 3800
        np.testing.assert_allclose(f[k, good], flux[k, np.flatnonzero(good) - shift], rtol=1e-10)
    assert np.all(iv[1, :3] == 0) and np.all(iv[4, :40] == 0) and np.all(iv[2, -6:] == 0)  # input ends at output pixel 3893
    assert iv[3, 3] > 0  # covered by the first input's wider left half
    assert np.all(iv[10, :15] == 0) and iv[9, 0] == 0 and np.all(iv[12] == 0) and 0 < np.count_nonzero(iv[11]) <= 4


@pytest.mark.parametrize("seed", range(3))
def test_geometric_rows_on_random_log_grids_resample_as_the_search(seed, monkeypatch):
    """Random log-linear grids (3e-6 to 3e-4 dex, 8-600 pixels), rows of 8-800 pixels on the same
    step shifted anywhere (off either end, whole pixels give or take 1e-13 to 1e-5), wavelengths
    jittered within the tolerance, bad and NaN pixels: the same good pixels as the search, the
    numbers within a few 1e-13 x lambda / d_lambda."""
    from cannonade.spectra import resampling

    rng = np.random.default_rng(100 + seed)
    log_step = resampling.log_step
    for _ in range(40):
        n_out, n_in, n = int(rng.integers(8, 600)), int(rng.integers(8, 800)), int(rng.integers(1, 8))
        dex = 10 ** rng.uniform(-5.5, -3.5)
        grid = rng.uniform(3000, 16000) * 10 ** (dex * np.arange(n_out))
        step = log_step(grid)
        assert step == pytest.approx(dex * np.log(10), rel=1e-9)
        d = rng.uniform(-n_in - 20, n_out + 20, n)
        whole = rng.random(n) < 0.3
        d[whole] = np.round(d[whole]) + rng.choice([0.0, 1e-13, -1e-13, 1e-9, -1e-9, 1e-5, -1e-5], whole.sum())
        wave = grid[0] * np.exp(step * (np.arange(n_in) + d[:, None])) * (1 + rng.uniform(-4e-14, 4e-14, (n, n_in)))
        flux = 1 + 0.1 * rng.normal(size=(n, n_in))
        ivar = rng.uniform(1, 10, (n, n_in))
        ivar[rng.random((n, n_in)) < 0.05] = 0.0
        flux[rng.random((n, n_in)) < 0.01] = np.nan
        f, iv = resample_batch(wave, flux, ivar, grid)
        monkeypatch.setattr(resampling, "log_step", lambda g: None)
        fs, ivs = resample_batch(wave, flux, ivar, grid)
        monkeypatch.setattr(resampling, "log_step", log_step)
        np.testing.assert_array_equal(np.isnan(f), np.isnan(fs))
        np.testing.assert_array_equal(iv > 0, ivs > 0)
        bound = 1e-12 / np.expm1(step)  # a few 1e-13 x lambda / d_lambda
        assert np.nanmax(np.abs(f - fs), initial=0.0) < bound * 1.5  # |flux| < ~1.5
        assert np.max(np.abs(iv - ivs) / np.where(ivs > 0, ivs, 1.0)) < 2 * bound


def test_searchsorted_rows_is_numpy_searchsorted_on_any_sorted_rows():
    from cannonade.spectra.preprocessing import searchsorted_rows

    rng = np.random.default_rng(3)
    rows = [
        np.sort(rng.uniform(1, 100, 300)),  # not log-spaced: the estimate misses, numpy takes the row
        10 ** (3.6 + 1e-4 * np.arange(300)),  # log-spaced: the estimate hits
        np.sort(rng.uniform(-50, 50, 300)),  # non-positive values: no log estimate
        np.concatenate([np.full(150, 4000.0), np.full(150, 4100.0)]),  # ties
    ]
    a = np.array(rows)
    v = np.sort(np.concatenate([rng.uniform(-60, 110, 50), rng.uniform(3900, 4200, 50), [4000.0, 4100.0]]))
    for side in ("left", "right"):
        expected = np.array([np.searchsorted(r, v, side=side) for r in a])
        np.testing.assert_array_equal(searchsorted_rows(a, v, side), expected)


def test_searchsorted_rows_estimates_log_and_linear_rows_without_numpy(monkeypatch):
    """Rows evenly spaced in log wavelength (LAMOST, APOGEE) or in wavelength (a GALAH CCD, 4096
    pixels of 0.0547 A, air to vacuum, Doppler shifted: a straight line in log wavelength misses
    it by ~20 pixels) are found by the estimate and its corrections, never by numpy's search,
    and give numpy's answer, also for values beyond either end of a row."""
    from cannonade.spectra import resampling
    from cannonade.spectra.linelists import air_to_vacuum
    from cannonade.spectra.preprocessing import doppler_shift

    galah = air_to_vacuum(5649.0 + 0.0547 * np.arange(4096))
    rows = np.array([galah, doppler_shift(galah, 2e-4), doppler_shift(galah, -3e-4),
                     10 ** (3.7519 + 4.15e-6 * np.arange(4096)), 10 ** (3.7519 + 1e-4 * np.arange(4096))])
    v = np.concatenate([log_lambda_grid(5500, 5900, 3000), [5649.0, 5700.0, 12000.0]])
    v.sort()
    v = np.unique(np.concatenate([v, rows[0, 100:103], rows[3, 5:8]]))  # values equal to pixels: the sides differ
    expected = {side: np.array([np.searchsorted(r, v, side=side) for r in rows]) for side in ("left", "right")}
    searched, _ = _spy_on(monkeypatch, np, "searchsorted")
    for side in ("left", "right"):
        got = resampling.searchsorted_rows(rows, v, side)
        np.testing.assert_array_equal(got, expected[side])
    assert searched == []


def test_kernel_block_pieces_sum_to_the_dense_block():
    """A dense kernel block is applied as low-rank core + dense ragged edges: the pieces' products
    sum to ``X @ Kb.T`` to 1e-13 of each row's weight sum, with fewer multiplications on a
    Gaussian; a block without a smooth core (random values) or without a core stays one dense piece."""
    from cannonade.spectra.preprocessing import block_pieces, gaussian_kernel_blocks

    rng = np.random.default_rng(8)

    def apply(pieces, X):
        out = 0.0
        for lo, hi, factors in pieces:
            t = X[:, lo:hi]
            for f in factors:
                t = t @ f
            out = out + t
        return out

    for grid in (common_grid("lamost"), common_grid("apogee")):
        blocks = gaussian_kernel_blocks(grid)
        for r0, r1, c0, c1, Kb in blocks[:: max(1, len(blocks) // 6)]:
            pieces = block_pieces(Kb)
            lo, hi, (V, USt) = next(p for p in pieces if len(p[2]) == 2)  # the core is factored
            rank = V.shape[1]
            assert rank < 20 and USt.shape == (rank, r1 - r0)
            assert sorted((p[0], p[1]) for p in pieces)[0][0] == 0 and max(p[1] for p in pieces) == c1 - c0
            X = rng.uniform(0, 2, (5, c1 - c0))
            err = np.abs(apply(pieces, X) - X @ Kb.T)
            assert np.all(err <= 1e-13 * 2 * Kb.sum(axis=1))
            # the ragged columns are exactly the dense block's
            assert all(np.array_equal(f[0], Kb[:, a:b].T) for a, b, f in pieces if len(f) == 1)
    noise = rng.uniform(0.1, 1, (16, 40))  # full rank: no saving, one dense piece
    (only,) = block_pieces(noise)
    assert only[:2] == (0, 40) and np.array_equal(only[2][0], noise.T)
    no_core = np.eye(8)  # no column non-zero in every row
    (only,) = block_pieces(no_core)
    assert only[:2] == (0, 8)
