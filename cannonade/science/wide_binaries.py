"""Wide binaries as a test of chemical resolving power (Wheeler et al. 2020 §5.2, Eq. 6, Fig. 12).

Three steps, each usable on its own:

1. :func:`find_wide_binaries` — pair candidates from the catalogue's own Gaia astrometry with
   the criteria of El-Badry & Rix (2018; the EB19 sample of the paper): projected separation
   s = θ/ϖ below 50 000 AU, parallaxes consistent within 3σ, proper-motion difference below the
   largest orbital motion of a bound pair (total mass 5 M_sun) plus 2σ, and isolated pairs only
   (a star in more than one candidate pair is dropped).
2. :func:`chemical_distance` — the precision-scaled Euclidean distance of Eq. 6 between two
   stars' abundance vectors.
3. :func:`wide_binary_test` — Fig. 12: distances of dwarf–dwarf binaries with ΔT_eff < 250 K
   against random field dwarf pairs with the same Δ[Fe/H] distribution (rejection sampling),
   and a two-sample test of "binaries are chemically closer".

All pair arithmetic is vectorised: the neighbour search is a k-d tree on unit vectors
(scipy ``cKDTree.sparse_distance_matrix``), looping only over a few bins of search radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.spatial import cKDTree

from cannonade.exceptions import LabelError, SelectionError, ShapeError
from cannonade.science.selection import (
    as_row_mask,
    columns_as_floats,
    dwarf_mask,
    n_rows,
)
from cannonade.tables import float_column

__all__ = [
    "ASTROMETRY_COLUMNS",
    "DWARF_ABUNDANCES",
    "GIANT_ABUNDANCES",
    "WideBinaryPairs",
    "WideBinaryTest",
    "angular_separation_arcsec",
    "chemical_distance",
    "find_wide_binaries",
    "orbital_pm_limit",
    "pm_difference",
    "precision_scaled_distance",
    "projected_separation_au",
    "wide_binary_test",
]

#: Gaia columns :func:`find_wide_binaries` reads (deg, deg, mas, mas, mas/yr x 4).
ASTROMETRY_COLUMNS = ("ra", "dec", "parallax", "parallax_error", "pmra", "pmra_error", "pmdec", "pmdec_error")
#: The [X/Fe] labels of Wheeler+2020's dwarf model (§2.2): the abundances of Eq. 6 for dwarfs.
DWARF_ABUNDANCES = ("o_fe", "eu_fe", "mean_alpha_fe", "sc_fe", "mean_s_fe")
#: The [X/Fe] labels of Wheeler+2020's giant model.
GIANT_ABUNDANCES = ("o_fe", "eu_fe", "mg_fe", "al_fe", "mn_fe", "ba_fe")

_ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0


# ----------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WideBinaryPairs:
    """Wide-binary candidates found from Gaia astrometry (:func:`find_wide_binaries`).

    Attributes
    ----------
    pairs : (n_pairs, 2) int
        Row indices into the table, ``pairs[:, 0] < pairs[:, 1]``, sorted.
    theta_arcsec : (n_pairs,) float
        Angular separation θ.
    separation_au : (n_pairs,) float
        Projected separation s = θ / ϖ̄ [AU], ϖ̄ the error-weighted mean parallax.
    parallax : (n_pairs,) float
        ϖ̄ [mas].
    delta_mu : (n_pairs,) float
        Proper-motion difference |Δμ| [mas/yr].
    delta_mu_orbit : (n_pairs,) float
        Largest orbital |Δμ| of a bound circular pair at s (:func:`orbital_pm_limit`) [mas/yr].
    sigma_delta_mu : (n_pairs,) float
        1σ uncertainty of |Δμ| [mas/yr].
    n_candidates : int
        Pairs passing the separation, parallax and proper-motion criteria, before isolation.
    """

    pairs: np.ndarray
    theta_arcsec: np.ndarray
    separation_au: np.ndarray
    parallax: np.ndarray
    delta_mu: np.ndarray
    delta_mu_orbit: np.ndarray
    sigma_delta_mu: np.ndarray
    n_candidates: int

    @property
    def n_pairs(self) -> int:
        """Number of isolated pairs."""
        return len(self.pairs)


@dataclass(frozen=True)
class WideBinaryTest:
    """Chemical distances of wide binaries against Δ[Fe/H]-matched field pairs (Fig. 12).

    Attributes
    ----------
    labels : tuple of str
        The abundances in the distance (Eq. 6), L of them.
    pairs : (n_pairs, 2) int
        The binaries that passed the cuts (both dwarfs, ΔT_eff below the limit, finite labels).
    field_pairs : (n_field, 2) int
        The random field pairs (row indices).
    distance_binaries : (n_pairs,) float
        Eq. 6 distance of each binary.
    distance_field : (n_field,) float
        Eq. 6 distance of each field pair.
    delta_fe_h_binaries : (n_pairs,) float
        |Δ[Fe/H]| of the binaries.
    delta_fe_h_field : (n_field,) float
        |Δ[Fe/H]| of the field pairs (matched in distribution to the binaries').
    statistic : float
        Mann–Whitney U of binaries against field pairs.
    p_value : float
        One-sided Mann–Whitney p-value of "binary distances are stochastically smaller".
    ks_statistic, ks_p_value : float
        Two-sided two-sample Kolmogorov–Smirnov test, for reference.
    edges : (n_bins + 1,) float
        Common histogram edges of the distances (0 to the 99th percentile of both samples).
    counts_binaries, counts_field : (n_bins,) int
        Histogram counts (normalise for Fig. 12).
    n_input : int
        Pairs given, before the cuts.
    """

    labels: tuple
    pairs: np.ndarray
    field_pairs: np.ndarray
    distance_binaries: np.ndarray
    distance_field: np.ndarray
    delta_fe_h_binaries: np.ndarray
    delta_fe_h_field: np.ndarray
    statistic: float
    p_value: float
    ks_statistic: float
    ks_p_value: float
    edges: np.ndarray
    counts_binaries: np.ndarray
    counts_field: np.ndarray
    n_input: int

    @property
    def n_pairs(self) -> int:
        """Number of binaries tested."""
        return len(self.pairs)

    @property
    def n_field(self) -> int:
        """Number of field pairs."""
        return len(self.field_pairs)

    @property
    def median_binaries(self) -> float:
        """Median Eq. 6 distance of the binaries."""
        return float(np.median(self.distance_binaries))

    @property
    def median_field(self) -> float:
        """Median Eq. 6 distance of the field pairs."""
        return float(np.median(self.distance_field))


# ----------------------------------------------------------------------------------------
# the maths (pure functions)
# ----------------------------------------------------------------------------------------
def angular_separation_arcsec(ra1, dec1, ra2, dec2):
    """Great-circle separation (haversine; exact at small angles).

    Parameters
    ----------
    ra1, dec1, ra2, dec2 : (n,) float
        Degrees.

    Returns
    -------
    (n,) float
        Arcseconds.
    """
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, dtype=float)) for a in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return 2.0 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))) * _ARCSEC_PER_RAD


def projected_separation_au(theta_arcsec, parallax_mas):
    """Projected separation s = θ / ϖ: θ [arcsec] x 1000 / ϖ [mas] AU (El-Badry & Rix 2018).

    Parameters
    ----------
    theta_arcsec, parallax_mas : (n,) float

    Returns
    -------
    (n,) float
        AU.
    """
    return 1000.0 * np.asarray(theta_arcsec, dtype=float) / np.asarray(parallax_mas, dtype=float)


def orbital_pm_limit(theta_arcsec, parallax_mas, total_mass_msun=5.0):
    """Largest proper-motion difference of a bound pair (El-Badry & Rix 2018 Eq. 4).

    The circular orbital speed at separation s is v = 2π sqrt(M / s) AU/yr (Kepler, M in
    M_sun, s in AU), and 1 AU/yr at parallax ϖ is ϖ mas/yr, so
    Δμ_orbit = 2π ϖ sqrt(M / s) = 0.44 mas/yr (ϖ/mas)^{3/2} (θ/arcsec)^{-1/2} for M = 5 M_sun.

    Parameters
    ----------
    theta_arcsec, parallax_mas : (n,) float
    total_mass_msun : float
        Total mass of the pair; 5 M_sun (El-Badry & Rix) bounds nearly every real pair.

    Returns
    -------
    (n,) float
        mas/yr.
    """
    s_au = projected_separation_au(theta_arcsec, parallax_mas)
    return 2.0 * np.pi * np.asarray(parallax_mas, dtype=float) * np.sqrt(float(total_mass_msun) / s_au)


def pm_difference(pmra1, pmdec1, pmra2, pmdec2, pmra_error1, pmdec_error1, pmra_error2, pmdec_error2):
    """Proper-motion difference |Δμ| and its propagated 1σ error.

    σ_Δμ² = (Δμ_α² (σ_α1² + σ_α2²) + Δμ_δ² (σ_δ1² + σ_δ2²)) / Δμ² (El-Badry & Rix 2018);
    where Δμ = 0 the mean of the two per-axis errors is used.

    Parameters
    ----------
    pmra1, pmdec1, pmra2, pmdec2 : (n,) float
        mas/yr (pmra includes cos δ, as Gaia's).
    pmra_error1, pmdec_error1, pmra_error2, pmdec_error2 : (n,) float

    Returns
    -------
    delta_mu : (n,) float
    sigma_delta_mu : (n,) float
    """
    da = np.asarray(pmra1, float) - np.asarray(pmra2, float)
    dd = np.asarray(pmdec1, float) - np.asarray(pmdec2, float)
    va = np.asarray(pmra_error1, float) ** 2 + np.asarray(pmra_error2, float) ** 2
    vd = np.asarray(pmdec_error1, float) ** 2 + np.asarray(pmdec_error2, float) ** 2
    dmu = np.hypot(da, dd)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(dmu > 0, (da**2 * va + dd**2 * vd) / dmu**2, 0.5 * (va + vd))
    return dmu, np.sqrt(var)


def precision_scaled_distance(delta, sigma, normalise=False):
    """Wheeler+2020 Eq. 6: sqrt(Σ_i (Δ[X_i/Fe] / σ_i)²).

    Parameters
    ----------
    delta : (n, L) float
        Abundance differences of n pairs in L labels.
    sigma : (n, L) or (L,) float
        The scale of each difference (positive).
    normalise : bool
        Divide the sum by L (a per-label RMS), so label sets of different size compare.

    Returns
    -------
    (n,) float
    """
    delta = np.asarray(delta, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    if delta.ndim != 2:
        raise ShapeError(f"delta must be (n_pairs, n_labels); got shape {delta.shape}")
    if sigma.shape not in (delta.shape, delta.shape[1:]):
        raise ShapeError(f"sigma must be {delta.shape} or {delta.shape[1:]}; got shape {sigma.shape}")
    chi2 = np.sum((delta / sigma) ** 2, axis=1)  # Eq. 6 under the square root
    if normalise:
        chi2 = chi2 / max(delta.shape[1], 1)
    return np.sqrt(chi2)


# ----------------------------------------------------------------------------------------
# finding pairs
# ----------------------------------------------------------------------------------------
def _unit_vectors(ra_deg, dec_deg):
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def _neighbour_pairs(xyz, radius_arcsec):
    """All (a, b), a < b, with separation ≤ the larger of the two stars' own radius.

    The stars are grouped in factor-2 bins of radius; each bin's k-d tree is matched against
    the tree of all stars at the bin's largest radius (loop over ~log2(range) bins only).

    Parameters
    ----------
    xyz : (n, 3) float
        Unit vectors.
    radius_arcsec : (n,) float, positive

    Returns
    -------
    (k, 2) int
    """
    n = len(xyz)
    if n < 2:
        return np.empty((0, 2), np.int64)
    tree = cKDTree(xyz)
    level = np.floor(np.log2(radius_arcsec / radius_arcsec.min())).astype(np.int64)
    found = []
    for lev in np.unique(level):
        q = np.flatnonzero(level == lev)
        r_max = radius_arcsec[q].max() / _ARCSEC_PER_RAD
        chord = 2.0 * np.sin(r_max / 2.0)
        sdm = cKDTree(xyz[q]).sparse_distance_matrix(tree, chord, output_type="ndarray")
        a, b = q[sdm["i"]], sdm["j"].astype(np.int64)
        theta = 2.0 * np.arcsin(np.clip(sdm["v"] / 2.0, 0, 1)) * _ARCSEC_PER_RAD
        keep = (a != b) & (theta <= radius_arcsec[a])
        found.append(np.column_stack([a[keep], b[keep]]))
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def find_wide_binaries(table, *, max_separation_au=50_000.0, parallax_nsigma=3.0, pm_nsigma=2.0,
                       total_mass_msun=5.0, min_parallax_over_error=5.0, isolated=True, mask=None):
    """Wide-binary candidates from Gaia astrometry, El-Badry & Rix (2018) style.

    A pair (a, b) is kept when

    * s = 1000 θ / ϖ̄ ≤ ``max_separation_au`` (θ in arcsec, ϖ̄ the error-weighted mean
      parallax in mas);
    * |ϖ_a − ϖ_b| ≤ ``parallax_nsigma`` sqrt(σ_ϖa² + σ_ϖb²);
    * |Δμ| ≤ Δμ_orbit(θ, ϖ̄, ``total_mass_msun``) + ``pm_nsigma`` σ_Δμ
      (:func:`orbital_pm_limit`, :func:`pm_difference`);
    * with ``isolated``, neither star is in another candidate pair (drops triples, clusters
      and moving groups).

    Only stars with finite astrometry, ϖ > 0 and ϖ/σ_ϖ ≥ ``min_parallax_over_error`` (and
    ``mask``) take part.

    Parameters
    ----------
    table : table with n rows and the columns of :data:`ASTROMETRY_COLUMNS`
    max_separation_au : float
    parallax_nsigma, pm_nsigma : float
    total_mass_msun : float
    min_parallax_over_error : float
    isolated : bool
    mask : (n,) bool, optional
        Stars allowed in pairs (e.g. a quality cut).

    Returns
    -------
    WideBinaryPairs

    Raises
    ------
    ColumnError
        An astrometry column is missing (named).
    SelectionError
        The table is empty.
    ShapeError
        ``mask`` is not (n,) bool.
    """
    allowed = as_row_mask(table, mask)
    ra, dec, plx, e_plx, pmra, e_pmra, pmdec, e_pmdec = columns_as_floats(table, ASTROMETRY_COLUMNS).T
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = allowed & np.all(np.isfinite(np.column_stack([ra, dec, plx, e_plx, pmra, e_pmra, pmdec, e_pmdec])), axis=1)
        ok &= (plx > 0) & (e_plx > 0) & (plx / e_plx >= min_parallax_over_error)
    idx = np.flatnonzero(ok)
    # search radius of each star: θ with s = max_separation_au at its own parallax
    radius = max_separation_au * plx[idx] / 1000.0
    cand = idx[_neighbour_pairs(_unit_vectors(ra[idx], dec[idx]), radius)] if len(idx) else np.empty((0, 2), np.int64)
    a, b = cand[:, 0], cand[:, 1]

    theta = angular_separation_arcsec(ra[a], dec[a], ra[b], dec[b])
    w_a, w_b = e_plx[a] ** -2, e_plx[b] ** -2
    plx_mean = (w_a * plx[a] + w_b * plx[b]) / (w_a + w_b)
    sep = projected_separation_au(theta, plx_mean)
    plx_ok = np.abs(plx[a] - plx[b]) <= parallax_nsigma * np.hypot(e_plx[a], e_plx[b])
    dmu, sig_dmu = pm_difference(pmra[a], pmdec[a], pmra[b], pmdec[b], e_pmra[a], e_pmdec[a], e_pmra[b], e_pmdec[b])
    dmu_orb = orbital_pm_limit(theta, plx_mean, total_mass_msun)
    keep = (sep <= max_separation_au) & plx_ok & (dmu <= dmu_orb + pm_nsigma * sig_dmu)
    n_candidates = int(keep.sum())
    if isolated and n_candidates:  # a star in two or more candidate pairs: drop all its pairs
        times = np.bincount(cand[keep].ravel(), minlength=len(ra))
        keep &= (times[a] == 1) & (times[b] == 1)
    return WideBinaryPairs(
        pairs=cand[keep].astype(np.int64).reshape(-1, 2), theta_arcsec=theta[keep], separation_au=sep[keep],
        parallax=plx_mean[keep], delta_mu=dmu[keep], delta_mu_orbit=dmu_orb[keep], sigma_delta_mu=sig_dmu[keep],
        n_candidates=n_candidates,
    )


# ----------------------------------------------------------------------------------------
# chemical distance (Eq. 6)
# ----------------------------------------------------------------------------------------
def _pair_indices(i, j, n):
    i = np.asarray(i)
    j = np.asarray(j)
    if i.ndim != 1 or i.shape != j.shape:
        raise ShapeError(f"i and j must be 1-D index arrays of one length; got shapes {i.shape} and {j.shape}")
    if i.size == 0:
        raise SelectionError("no pairs given (i and j are empty)")
    if i.dtype.kind not in "iu" or j.dtype.kind not in "iu":
        raise ShapeError(f"i and j must be integer row indices; got {i.dtype} and {j.dtype}")
    bad = (i < 0) | (i >= n) | (j < 0) | (j >= n)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ShapeError(f"pair {k} ({int(i[k])}, {int(j[k])}) indexes outside the table's {n} rows")
    return i.astype(np.int64), j.astype(np.int64)


def _label_list(labels):
    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels:
        raise LabelError("no labels given for the chemical distance")
    return labels


def _sigma_vector(sigma, labels):
    """Per-label scale (L,) from a mapping or a sequence (the paper's CV-assessed σ_i)."""
    if isinstance(sigma, dict):
        missing = [lab for lab in labels if lab not in sigma]
        if missing:
            raise LabelError(f"sigma gives no scale for label(s) {missing}")
        sigma = [sigma[lab] for lab in labels]
    s = np.asarray(sigma, dtype=float)
    if s.shape != (len(labels),):
        raise ShapeError(f"sigma must give one scale per label ({len(labels)}); got shape {s.shape}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise LabelError(f"sigma must be finite and positive for every label; got {dict(zip(labels, s.tolist()))}")
    return s


def chemical_distance(table, i, j, labels=DWARF_ABUNDANCES, *, sigma=None, normalise=False):
    """Wheeler+2020 Eq. 6 distance between stars ``i[k]`` and ``j[k]``.

    d_k = sqrt(Σ_l (x_{i_k,l} − x_{j_k,l})² / σ_{k,l}²) over the labels l, where by default
    σ_{k,l}² = e_{i_k,l}² + e_{j_k,l}² from the per-star calibrated errors ``e_<label>``
    (the uncertainty of the difference, so identical stars have d² ~ χ²_L). With ``sigma``
    given, σ_{k,l} = sigma[l] for every pair: the paper's literal form, σ_i "their CV-assessed
    uncertainty".

    Parameters
    ----------
    table : table with n rows; columns ``<label>`` (and ``e_<label>`` when ``sigma`` is None)
    i, j : (n_pairs,) int
        Row indices.
    labels : sequence of str
        The [X/Fe] abundances; default the dwarf model's (:data:`DWARF_ABUNDANCES`).
    sigma : dict {label: float} or (L,) float, optional
        One scale per label (e.g. the CV scatter) instead of the per-star errors.
    normalise : bool
        Divide the sum by the number of labels (:func:`precision_scaled_distance`).

    Returns
    -------
    (n_pairs,) float

    Raises
    ------
    ColumnError
        A label or error column is missing (named).
    ShapeError
        i, j not 1-D integer arrays of one length, or out of range.
    SelectionError
        No pairs.
    LabelError
        A label or its error is not finite (or an error is not positive) for a pair: names the
        label and the first such pair.
    """
    n = n_rows(table)
    labels = _label_list(labels)
    i, j = _pair_indices(i, j, n)
    x = columns_as_floats(table, labels)
    delta = x[i] - x[j]
    if sigma is None:
        e = columns_as_floats(table, [f"e_{lab}" for lab in labels])
        scale = np.sqrt(e[i] ** 2 + e[j] ** 2)
    else:
        scale = _sigma_vector(sigma, labels)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(delta) | ~(np.broadcast_to(scale, delta.shape) > 0)
    if bad.any():
        k, lab = np.argwhere(bad)[0]
        raise LabelError(f"label {labels[lab]!r} (or its error e_{labels[lab]}) is not finite/positive for "
                         f"{int(bad[:, lab].sum())} pair(s), first rows ({int(i[k])}, {int(j[k])}); select pairs with finite labels")
    return precision_scaled_distance(delta, scale, normalise=normalise)


# ----------------------------------------------------------------------------------------
# the test of Fig. 12
# ----------------------------------------------------------------------------------------
def _as_pairs(pairs, n):
    p = pairs.pairs if isinstance(pairs, WideBinaryPairs) else np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ShapeError(f"pairs must be an (n_pairs, 2) array of row indices; got shape {p.shape}")
    if len(p) == 0:
        raise SelectionError("no wide-binary pairs given")
    _pair_indices(p[:, 0], p[:, 1], n)
    return p.astype(np.int64)


def _match_bins(target, n_bins):
    """Quantile edges of the binaries' |Δ[Fe/H]| ((k+1,) from 0) and the target fraction per bin."""
    edges = np.unique(np.quantile(target, np.linspace(0, 1, n_bins + 1)))
    edges[0] = 0.0
    edges[-1] = np.nextafter(edges[-1], np.inf) if edges[-1] > 0 else 1e-12
    if len(edges) < 2:
        edges = np.array([0.0, 1e-12])
    frac = np.histogram(target, edges)[0] / len(target)
    return edges, frac


def _draw_field_pairs(rng, pool, teff, max_delta_teff, n_draw, exclude):
    """n_draw random pairs of distinct pool stars with |ΔT_eff| < max; binaries excluded. (k, 2) int."""
    a = pool[rng.integers(0, len(pool), n_draw)]
    b = pool[rng.integers(0, len(pool), n_draw)]
    ok = (a != b) & (np.abs(teff[a] - teff[b]) < max_delta_teff)
    key = np.minimum(a, b) * len(teff) + np.maximum(a, b)
    ok &= ~np.isin(key, exclude)
    return np.column_stack([a[ok], b[ok]])


def wide_binary_test(table, pairs, labels=DWARF_ABUNDANCES, *, max_delta_teff=250.0, n_field=5000, seed=0,
                     mask=None, sigma=None, normalise=False, n_match_bins=None, n_hist_bins=30,
                     max_batches=200):
    """Wheeler+2020 §5.2 / Fig. 12: are wide binaries chemically closer than matched field pairs?

    1. Binaries: both stars dwarfs (:func:`~cannonade.science.selection.dwarf_mask`) with
       finite T_eff, [Fe/H], labels and errors, and |ΔT_eff| < ``max_delta_teff`` (250 K).
    2. Field pairs: random pairs of such dwarfs with the same |ΔT_eff| cut, accepted by
       rejection sampling so that their |Δ[Fe/H]| follows the binaries' distribution: the
       binaries' |Δ[Fe/H]| is cut into ``n_match_bins`` quantile bins and a proposal in bin k
       is accepted with probability ∝ t_k / p_k (t_k, p_k the binaries' and proposals'
       fractions in bin k); proposals beyond the largest binary |Δ[Fe/H]| are rejected.
    3. Eq. 6 distances of both (:func:`chemical_distance`) and a one-sided Mann–Whitney U test
       of "binary distances are stochastically smaller" (rank based: robust to the distances'
       long tails, and tests the direction of the paper's claim); the two-sided KS test is
       reported too.

    Parameters
    ----------
    table : table with n rows; columns teff, fe_h, the labels, their ``e_`` errors and
        giantmodel / model_class (or teff and logg)
    pairs : (n_pairs, 2) int or WideBinaryPairs
    labels : sequence of str
        Default :data:`DWARF_ABUNDANCES` (the dwarf model's [X/Fe]).
    max_delta_teff : float
        K.
    n_field : int
        Field pairs to draw.
    seed : int or numpy Generator
        The result is deterministic for a given seed.
    mask : (n,) bool, optional
        Stars allowed (e.g. :func:`~cannonade.science.selection.quality_mask`).
    sigma, normalise
        Passed to :func:`chemical_distance`.
    n_match_bins : int, optional
        Default clip(n_pairs // 5, 1, 10).
    n_hist_bins : int
    max_batches : int
        Proposal batches before giving up on reaching ``n_field`` (fewer are returned).

    Returns
    -------
    WideBinaryTest

    Raises
    ------
    ColumnError
        A needed column is missing (named).
    ShapeError
        ``pairs`` is not (n_pairs, 2) in range, or ``mask`` not (n,) bool.
    SelectionError
        Fewer than 3 binaries or 2 field dwarfs survive the cuts (the message gives the counts).
    """
    n = n_rows(table)
    labels = _label_list(labels)
    p = _as_pairs(pairs, n)
    rng = np.random.default_rng(seed)
    teff, feh = float_column(table, "teff"), float_column(table, "fe_h")
    need = columns_as_floats(table, labels if sigma is not None else labels + [f"e_{lab}" for lab in labels])
    with np.errstate(invalid="ignore"):
        usable = as_row_mask(table, mask) & dwarf_mask(table) & np.isfinite(teff) & np.isfinite(feh)
        usable &= np.all(np.isfinite(need), axis=1)
        if sigma is None:
            usable &= np.all(need[:, len(labels):] > 0, axis=1)
    both = usable[p[:, 0]] & usable[p[:, 1]]
    close = both & (np.abs(teff[p[:, 0]] - teff[p[:, 1]]) < max_delta_teff)
    binaries = p[close]
    if len(binaries) < 3:
        raise SelectionError(f"{len(p)} pairs given, {int(both.sum())} with both stars usable dwarfs (finite {labels}), "
                             f"{len(binaries)} with |ΔTeff| < {max_delta_teff} K: need at least 3 binaries")
    pool = np.flatnonzero(usable)
    if len(pool) < 2:
        raise SelectionError(f"{len(pool)} usable field dwarfs: need at least 2 to draw field pairs")

    # rejection sampling of field pairs with the binaries' |Δ[Fe/H]| distribution
    target = np.abs(feh[binaries[:, 0]] - feh[binaries[:, 1]])
    k = int(np.clip(len(binaries) // 5, 1, 10)) if n_match_bins is None else int(n_match_bins)
    edges, frac = _match_bins(target, k)
    exclude = np.minimum(p[:, 0], p[:, 1]) * n + np.maximum(p[:, 0], p[:, 1])
    batch = max(20 * n_field, 100_000)
    pilot = _draw_field_pairs(rng, pool, teff, max_delta_teff, batch, exclude)
    prop = np.histogram(np.abs(feh[pilot[:, 0]] - feh[pilot[:, 1]]), edges)[0] / max(len(pilot), 1)
    if np.any((frac > 0) & (prop == 0)):
        kk = int(np.flatnonzero((frac > 0) & (prop == 0))[0])
        raise SelectionError(f"no field pair with |Δ[Fe/H]| in [{edges[kk]:.3g}, {edges[kk + 1]:.3g}) among {len(pilot)} "
                             f"proposals: cannot match the binaries' Δ[Fe/H] distribution")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(prop > 0, frac / prop, 0.0)
    accept = ratio / ratio.max()
    field, n_have, cand = [], 0, pilot
    for _ in range(max_batches):
        d = np.abs(feh[cand[:, 0]] - feh[cand[:, 1]])
        b = np.digitize(d, edges) - 1
        inside = (b >= 0) & (b < len(accept))
        u = rng.random(len(cand))
        ok = inside & (u < np.where(inside, accept[np.clip(b, 0, len(accept) - 1)], 0.0))
        field.append(cand[ok])
        n_have += int(ok.sum())
        if n_have >= n_field:
            break
        cand = _draw_field_pairs(rng, pool, teff, max_delta_teff, batch, exclude)
    field = np.concatenate(field)[:n_field]
    if len(field) < 3:
        raise SelectionError(f"only {len(field)} field pairs matched the binaries' Δ[Fe/H] distribution")

    d_bin = chemical_distance(table, binaries[:, 0], binaries[:, 1], labels, sigma=sigma, normalise=normalise)
    d_fld = chemical_distance(table, field[:, 0], field[:, 1], labels, sigma=sigma, normalise=normalise)
    mw = stats.mannwhitneyu(d_bin, d_fld, alternative="less")
    ks = stats.ks_2samp(d_bin, d_fld)
    both_d = np.concatenate([d_bin, d_fld])
    h_edges = np.linspace(0.0, float(np.percentile(both_d, 99)), n_hist_bins + 1)
    return WideBinaryTest(
        labels=tuple(labels), pairs=binaries, field_pairs=field, distance_binaries=d_bin, distance_field=d_fld,
        delta_fe_h_binaries=target, delta_fe_h_field=np.abs(feh[field[:, 0]] - feh[field[:, 1]]),
        statistic=float(mw.statistic), p_value=float(mw.pvalue), ks_statistic=float(ks.statistic),
        ks_p_value=float(ks.pvalue), edges=h_edges, counts_binaries=np.histogram(d_bin, h_edges)[0],
        counts_field=np.histogram(d_fld, h_edges)[0], n_input=len(p),
    )
