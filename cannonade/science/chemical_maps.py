"""Mean-label maps of the Milky Way and the radial metallicity gradient (Wheeler et al. 2020 §5.3).

* :func:`mean_label_map` — the binned mean of a label on a 2-D grid, bins with fewer than
  ``min_count`` stars masked: the building block of Figs 13–15.
* :func:`map_rz` — giants in the meridional plane (R, z), Fig. 13 (7.5 < R < 15 kpc,
  −4 < z < 4 kpc, summed over φ).
* :func:`map_xy` — kinematic thin-disc giants (J_z < 30 kpc km/s) in (X, Y), Fig. 14.
* :func:`map_rvphi` — kinematic thin-disc giants in (R, v_φ), Fig. 15 (the Kawata ridges).
* :func:`radial_gradient` — d[Fe/H]/dR of giants near the plane: a weighted straight-line
  fit with an intrinsic-scatter term and σ-clipping (not in the paper; a check of the maps).

Frame (:mod:`cannonade.galaxy.dynamics`): R, φ, z are galpy's — φ = 0 at the Sun and
increasing in the direction of rotation, v_φ = vT > 0 for prograde stars. (X, Y) follow
Wheeler+2020 (a right-handed frame with the Sun at X = +8 kpc moving towards −Y):
X = R cos φ, Y = −R sin φ (:func:`galactic_xy`).

The maps use the catalogue's giants (:func:`~cannonade.science.selection.giant_mask`); pass
``mask=quality_mask(table)`` for the paper's χ² < 7000 cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from cannonade.exceptions import SelectionError, ShapeError
from cannonade.science.selection import (
    THIN_DISC_JZ_MAX,
    as_row_mask,
    giant_mask,
    thin_disc_mask,
)
from cannonade.tables import float_column

__all__ = [
    "LabelMap",
    "RadialGradient",
    "galactic_xy",
    "intrinsic_scatter",
    "map_rvphi",
    "map_rz",
    "map_xy",
    "mean_label_map",
    "radial_gradient",
    "weighted_line_fit",
]


@dataclass(frozen=True)
class LabelMap:
    """The mean of a label on a 2-D grid (Wheeler+2020 Figs 13–15).

    Attributes
    ----------
    label : str
        The mapped label ('' when made from arrays).
    x_name, y_name : str
        The axes, e.g. 'R' and 'z'.
    x_edges : (n_x + 1,) float
    y_edges : (n_y + 1,) float
    mean : (n_y, n_x) numpy.ma.MaskedArray of float
        Image order (row = y bin, column = x bin), ready for
        ``pcolormesh(x_edges, y_edges, mean)``; masked where fewer than ``min_count`` stars.
    count : (n_y, n_x) int
        Stars per bin (all of them, also in masked bins).
    min_count : int
    n : int
        Stars inside the grid.
    """

    label: str
    x_name: str
    y_name: str
    x_edges: np.ndarray
    y_edges: np.ndarray
    mean: np.ma.MaskedArray
    count: np.ndarray
    min_count: int
    n: int

    @property
    def x_centres(self) -> np.ndarray:
        """(n_x,) bin centres."""
        return 0.5 * (self.x_edges[1:] + self.x_edges[:-1])

    @property
    def y_centres(self) -> np.ndarray:
        """(n_y,) bin centres."""
        return 0.5 * (self.y_edges[1:] + self.y_edges[:-1])


@dataclass(frozen=True)
class RadialGradient:
    """A straight-line fit label = intercept + slope R (:func:`radial_gradient`).

    Attributes
    ----------
    label : str
    slope, slope_error : float
        dex/kpc (label units per kpc) and its 1σ error.
    intercept, intercept_error : float
        The value at R = 0 and its 1σ error.
    covariance : (2, 2) float
        Covariance of (intercept, slope) from the weighted fit.
    scatter : float
        Intrinsic scatter s about the line (label units), added in quadrature to each star's error.
    n : int
        Stars in the final fit.
    n_clipped : int
        Stars of the selection left out by the σ-clipping.
    r_range : (float, float)
        kpc.
    z_max : float
        |z| limit, kpc.
    error_method : {'covariance', 'bootstrap'}
        Where ``slope_error`` and ``intercept_error`` come from.
    """

    label: str
    slope: float
    slope_error: float
    intercept: float
    intercept_error: float
    covariance: np.ndarray
    scatter: float
    n: int
    n_clipped: int
    r_range: tuple
    z_max: float
    error_method: str

    def value_at(self, R):
        """The fitted line at R [kpc]: (n,) float or float."""
        return self.intercept + self.slope * np.asarray(R, dtype=float)


# ----------------------------------------------------------------------------------------
# maps
# ----------------------------------------------------------------------------------------
def galactic_xy(R, phi):
    """Wheeler+2020 (X, Y): right-handed, Sun at X = +8 kpc, rotation towards −Y.

    Parameters
    ----------
    R : (n,) float
        kpc.
    phi : (n,) float
        rad, galpy's (0 at the Sun, increasing with rotation).

    Returns
    -------
    X, Y : (n,) float
        kpc; X = R cos φ, Y = −R sin φ.
    """
    R = np.asarray(R, dtype=float)
    phi = np.asarray(phi, dtype=float)
    return R * np.cos(phi), -R * np.sin(phi)


def _extent(x, y, extent):
    """((xlo, xhi), (ylo, yhi)); a None axis takes the 0.5–99.5th percentile of the data."""
    extent = (None, None) if extent is None else extent
    out = []
    for v, e in zip((x, y), extent):
        if e is None:
            lo, hi = np.percentile(v, [0.5, 99.5])
            e = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        out.append((float(e[0]), float(e[1])))
    return tuple(out)


def mean_label_map(x, y, values, bins=40, extent=None, min_count=10, *, label="", x_name="x", y_name="y"):
    """Binned mean of ``values`` on an (x, y) grid (scipy ``binned_statistic_2d``).

    Parameters
    ----------
    x, y, values : (n,) float
        Non-finite triples are left out.
    bins : int or (int, int) or [(n_x+1,) array, (n_y+1,) array]
        As for ``binned_statistic_2d`` (x first).
    extent : ((float, float), (float, float)), optional
        ((x_min, x_max), (y_min, y_max)); None (or a None axis): the 0.5–99.5th percentile of
        the data. Ignored for an axis given as explicit edges.
    min_count : int
        Bins with fewer stars are masked in ``mean`` (their ``count`` is kept).
    label, x_name, y_name : str
        Names carried into the result.

    Returns
    -------
    LabelMap

    Raises
    ------
    ShapeError
        x, y, values are not 1-D of one length.
    SelectionError
        No finite (x, y, value), or none inside the grid.
    """
    x, y, v = (np.asarray(a, dtype=float) for a in (x, y, values))
    if x.ndim != 1 or x.shape != y.shape or x.shape != v.shape:
        raise ShapeError(f"x, y and values must be 1-D of one length; got shapes {x.shape}, {y.shape}, {v.shape}")
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(v)
    if not ok.any():
        raise SelectionError(f"no star with finite {x_name}, {y_name} and {label or 'value'} ({x.size} given)")
    x, y, v = x[ok], y[ok], v[ok]
    explicit = not np.isscalar(bins) and len(bins) == 2 and np.ndim(bins[0]) == 1
    rng = None if explicit else _extent(x, y, extent)
    mean, xe, ye, _ = stats.binned_statistic_2d(x, y, v, "mean", bins=bins, range=rng)
    count = stats.binned_statistic_2d(x, y, v, "count", bins=[xe, ye])[0].astype(np.int64)
    n = int(count.sum())
    if n == 0:
        raise SelectionError(f"none of the {x.size} stars lies inside the {x_name}-{y_name} grid {rng}")
    mean, count = mean.T, count.T  # scipy gives [x_bin, y_bin]; image order is [y_bin, x_bin]
    masked = np.ma.masked_array(np.where(count > 0, mean, 0.0), mask=count < max(int(min_count), 1))
    return LabelMap(label=label, x_name=x_name, y_name=y_name, x_edges=xe, y_edges=ye, mean=masked,
                    count=count, min_count=int(min_count), n=n)


def _sample(table, mask, giants, jz_max):
    sel = as_row_mask(table, mask)
    if giants:
        sel &= giant_mask(table)
    if jz_max is not None:
        sel &= thin_disc_mask(table, jz_max)
    if not sel.any():
        raise SelectionError(f"no star left after the selection (mask, giants={giants}, jz_max={jz_max})")
    return sel


def map_rz(table, label, *, bins=(30, 32), r_range=(7.5, 15.0), z_range=(-4.0, 4.0), min_count=10, mask=None,
           giants=True):
    """Fig. 13: mean ``label`` of giants in the (R, z) plane, summed over φ.

    Parameters
    ----------
    table : table with n rows; columns R, z [kpc], ``label``, giantmodel / model_class
    label : str
    bins : int or (int, int)
        (R bins, z bins).
    r_range, z_range : (float, float) or None
        kpc; the paper's 7.5–15 and −4–4 by default; None: the data's 0.5–99.5th percentile.
    min_count : int
    mask : (n,) bool, optional
    giants : bool
        Giants only, as in the paper.

    Returns
    -------
    LabelMap
        x = R, y = z.
    """
    sel = _sample(table, mask, giants, None)
    R, z, v = (float_column(table, c)[sel] for c in ("R", "z", label))
    return mean_label_map(R, z, v, bins, (r_range, z_range), min_count, label=label, x_name="R", y_name="z")


def map_xy(table, label, *, bins=40, x_range=None, y_range=None, min_count=10, mask=None, giants=True,
           jz_max=THIN_DISC_JZ_MAX):
    """Fig. 14: mean ``label`` of kinematic thin-disc giants (J_z < 30 kpc km/s) in (X, Y).

    Parameters
    ----------
    table : table with n rows; columns R [kpc], phi [rad], Jz [kpc km/s], ``label``
    label : str
    bins : int or (int, int)
    x_range, y_range : (float, float) or None
        kpc; None: the data's 0.5–99.5th percentile.
    min_count : int
    mask : (n,) bool, optional
    giants : bool
    jz_max : float or None
        J_z limit of the kinematic thin disc; None keeps every star.

    Returns
    -------
    LabelMap
        x = X, y = Y (:func:`galactic_xy`).
    """
    sel = _sample(table, mask, giants, jz_max)
    X, Y = galactic_xy(float_column(table, "R")[sel], float_column(table, "phi", unit="rad")[sel])
    v = float_column(table, label)[sel]
    return mean_label_map(X, Y, v, bins, (x_range, y_range), min_count, label=label, x_name="X", y_name="Y")


def map_rvphi(table, label, *, bins=40, r_range=None, vphi_range=None, min_count=10, mask=None, giants=True,
              jz_max=THIN_DISC_JZ_MAX):
    """Fig. 15: mean ``label`` of kinematic thin-disc giants in (R, v_φ) (v_φ = the ``vT`` column).

    Parameters
    ----------
    table : table with n rows; columns R [kpc], vT [km/s], Jz [kpc km/s], ``label``
    label : str
    bins : int or (int, int)
    r_range, vphi_range : (float, float) or None
        kpc and km/s; None: the data's 0.5–99.5th percentile.
    min_count : int
    mask : (n,) bool, optional
    giants : bool
    jz_max : float or None

    Returns
    -------
    LabelMap
        x = R, y = v_φ.
    """
    sel = _sample(table, mask, giants, jz_max)
    R, vphi, v = (float_column(table, c)[sel] for c in ("R", "vT", label))
    return mean_label_map(R, vphi, v, bins, (r_range, vphi_range), min_count, label=label, x_name="R", y_name="vphi")


# ----------------------------------------------------------------------------------------
# the radial gradient
# ----------------------------------------------------------------------------------------
def weighted_line_fit(x, y, yerr, scatter=0.0):
    """Weighted least squares y = a + b x with weights 1 / (yerr² + scatter²).

    Parameters
    ----------
    x, y, yerr : (n,) float
    scatter : float

    Returns
    -------
    coef : (2,) float
        (a, b).
    cov : (2, 2) float
        (AᵀWA)⁻¹, the covariance of (a, b) when the weights are right.
    """
    w = 1.0 / (np.asarray(yerr, float) ** 2 + float(scatter) ** 2)
    A = np.column_stack([np.ones_like(x), x])
    ata = A.T @ (A * w[:, None])
    cov = np.linalg.inv(ata)
    return cov @ (A.T @ (w * y)), cov


def intrinsic_scatter(resid, yerr, dof):
    """The s ≥ 0 with Σ r² / (yerr² + s²) = dof (reduced χ² of one); 0 if already ≤ dof.

    Parameters
    ----------
    resid, yerr : (n,) float
    dof : int

    Returns
    -------
    float
    """
    r2, e2 = np.asarray(resid, float) ** 2, np.asarray(yerr, float) ** 2

    def excess(s):
        return np.sum(r2 / (e2 + s * s)) - dof

    if dof <= 0 or excess(0.0) <= 0:
        return 0.0
    hi = np.sqrt(np.max(r2)) + 1.0
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-6))


def _fit_with_scatter(R, y, e, keep, n_inner=5):
    s = 0.0
    for _ in range(n_inner):  # the weights and the scatter depend on each other
        coef, cov = weighted_line_fit(R[keep], y[keep], e[keep], s)
        s_new = intrinsic_scatter(y[keep] - coef[0] - coef[1] * R[keep], e[keep], int(keep.sum()) - 2)
        if abs(s_new - s) < 1e-5:
            s = s_new
            break
        s = s_new
    coef, cov = weighted_line_fit(R[keep], y[keep], e[keep], s)
    return coef, cov, s


def radial_gradient(table, label="fe_h", *, r_range=(5.0, 15.0), z_max=0.5, jz_max=None, giants=True, mask=None,
                    error_column=None, clip=3.0, max_iter=20, n_bootstrap=0, seed=0):
    """The radial gradient d(label)/dR of giants near the plane, with its uncertainty.

    Model: label_k = a + b R_k + ε_k, ε_k ~ N(0, e_k² + s²), e_k the star's ``e_<label>`` and s
    an intrinsic scatter chosen so the reduced χ² is one (the spread of [Fe/H] at fixed R is
    mostly real, not measurement error). Weighted least squares gives (a, b) and their
    covariance; stars more than ``clip`` sqrt(e_k² + s²) from the line are left out and the fit
    repeated until the set is stable (catastrophic label failures and a few halo stars).
    With ``n_bootstrap`` > 0 the errors are instead the standard deviation of the fits to
    bootstrap resamples of the final stars (s fixed).

    Parameters
    ----------
    table : table with n rows; columns R, z [kpc], ``label``, ``e_<label>`` (or
        ``error_column``), giantmodel / model_class, and Jz when ``jz_max`` is set
    label : str
    r_range : (float, float)
        kpc.
    z_max : float
        |z| < z_max kpc.
    jz_max : float, optional
        Also require J_z < jz_max (the kinematic thin disc of Figs 14–15).
    giants : bool
        Giants only (the paper maps the disc with giants).
    mask : (n,) bool, optional
        E.g. :func:`~cannonade.science.selection.quality_mask`.
    error_column : str, optional
        Default ``e_<label>``.
    clip : float or None
        None: no clipping.
    max_iter : int
    n_bootstrap : int
    seed : int or numpy Generator
        For the bootstrap.

    Returns
    -------
    RadialGradient

    Raises
    ------
    ColumnError
        A column is missing (named).
    SelectionError
        Fewer than 3 stars, or all at one R, after the cuts.
    """
    sel = _sample(table, mask, giants, jz_max)
    R, z = float_column(table, "R"), float_column(table, "z")
    y, e = float_column(table, label), float_column(table, error_column or f"e_{label}")
    with np.errstate(invalid="ignore"):
        sel &= (R >= r_range[0]) & (R <= r_range[1]) & (np.abs(z) < z_max)
        sel &= np.isfinite(y) & np.isfinite(e) & (e >= 0)
    R, y, e = R[sel], y[sel], e[sel]
    if len(R) < 3 or np.ptp(R) == 0:
        raise SelectionError(f"{len(R)} stars with finite {label} in {r_range[0]} <= R <= {r_range[1]} kpc and |z| < {z_max} kpc"
                             f" (giants={giants}, jz_max={jz_max}): need at least 3 at different R")
    e = np.maximum(e, 1e-6)  # a zero error would take all the weight
    keep = np.ones(len(R), bool)
    for _ in range(max_iter):
        coef, cov, s = _fit_with_scatter(R, y, e, keep)
        if clip is None:
            break
        new = np.abs(y - coef[0] - coef[1] * R) <= clip * np.sqrt(e**2 + s**2)
        if new.sum() < 3 or np.array_equal(new, keep):
            break
        keep = new
    coef, cov, s = _fit_with_scatter(R, y, e, keep)
    err = np.sqrt(np.diag(cov))
    method = "covariance"
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        idx = np.flatnonzero(keep)
        boot = np.array([weighted_line_fit(R[b], y[b], e[b], s)[0] for b in (rng.choice(idx, len(idx)) for _ in range(int(n_bootstrap)))])
        err, method = boot.std(axis=0, ddof=1), "bootstrap"
    return RadialGradient(label=label, slope=float(coef[1]), slope_error=float(err[1]), intercept=float(coef[0]),
                          intercept_error=float(err[0]), covariance=cov, scatter=float(s), n=int(keep.sum()),
                          n_clipped=int((~keep).sum()), r_range=(float(r_range[0]), float(r_range[1])),
                          z_max=float(z_max), error_method=method)
