"""Sky and identifier cross-matching between catalogues.

Wheeler+2020 §2 and §5.1 match LAMOST to GALAH and to *Gaia* on the sky within
1″, keeping the brightest *Gaia* G source. The functions here are generic:
``sky_match`` lists every pair within a radius, ``best_match`` keeps one
counterpart per source of catalogue 1 (nearest, or best by a rank such as
``phot_g_mean_mag``) and reports multiple matches and duplicates,
``gaia_match`` joins a Gaia table onto a catalogue keeping every input row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from cannonade.exceptions import ColumnError, ParameterError, ShapeError
from cannonade.tables import as_table, is_pandas, require_columns

log = logging.getLogger(__name__)


class Pairs(NamedTuple):
    """All pairs within the match radius, sorted by ``idx1`` then separation."""

    idx1: np.ndarray  # (n_pairs,) int, row in catalogue 1
    idx2: np.ndarray  # (n_pairs,) int, row in catalogue 2
    sep_arcsec: np.ndarray  # (n_pairs,) float


@dataclass
class BestMatch:
    """One counterpart (or none) per source of catalogue 1.

    Attributes
    ----------
    index : (n1,) int
        Row in catalogue 2, -1 where there is no counterpart within the radius.
    sep_arcsec : (n1,) float
        Separation to the chosen counterpart, NaN where none.
    n_matches : (n1,) int
        Number of catalogue-2 sources within the radius (> 1: a multiple match,
        resolved by ``rank`` or separation).
    duplicated : (n1,) bool
        The chosen catalogue-2 source is also the choice of another catalogue-1
        source (several sources of catalogue 1 matched to one in catalogue 2).
    """

    index: np.ndarray
    sep_arcsec: np.ndarray
    n_matches: np.ndarray
    duplicated: np.ndarray

    @property
    def matched(self):
        """(n1,) bool -- a counterpart was found."""
        return self.index >= 0

    @property
    def n_multiple(self):
        """Number of catalogue-1 sources with more than one candidate."""
        return int(np.sum(self.n_matches > 1))

    @property
    def n_duplicated(self):
        """Number of catalogue-1 sources sharing their counterpart with another."""
        return int(np.sum(self.duplicated))

    def summary(self):
        """One line: matched / multiple / duplicated counts."""
        n = self.index.shape[0]
        return (
            f"{int(self.matched.sum())} of {n} matched, {self.n_multiple} with several candidates, "
            f"{self.n_duplicated} sharing a counterpart"
        )


def _deg(x, name):
    """Angles as a float64 (n,) array in degrees (astropy units honoured, masked -> NaN)."""
    unit = getattr(x, "unit", None)
    if unit is not None:
        import astropy.units as u

        if isinstance(x, u.Quantity):
            arr = x.to_value(u.deg)
        else:
            arr = (np.ma.filled(np.ma.asarray(x, dtype=float), np.nan) * u.Unit(unit)).to_value(u.deg)
    else:
        arr = np.ma.filled(np.ma.asarray(x, dtype=float), np.nan)
    arr = np.asarray(arr, dtype=float)
    if arr.ndim != 1:
        raise ShapeError(f"{name} must be 1-d, got shape {arr.shape}")
    return arr


def sky_match(ra1, dec1, ra2, dec2, radius_arcsec=1.0):
    """All pairs of sources closer than ``radius_arcsec`` on the sky.

    Parameters
    ----------
    ra1, dec1 : (n1,) float, deg
    ra2, dec2 : (n2,) float, deg
        Non-finite coordinates never match.
    radius_arcsec : float

    Returns
    -------
    Pairs
        ``(idx1, idx2, sep_arcsec)``, each (n_pairs,), sorted by idx1 then separation.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord, search_around_sky

    ra1, dec1, ra2, dec2 = (_deg(a, n) for a, n in ((ra1, "ra1"), (dec1, "dec1"), (ra2, "ra2"), (dec2, "dec2")))
    if ra1.shape != dec1.shape or ra2.shape != dec2.shape:
        raise ShapeError(f"ra/dec shapes differ: {ra1.shape}/{dec1.shape}, {ra2.shape}/{dec2.shape}")
    ok1 = np.flatnonzero(np.isfinite(ra1) & np.isfinite(dec1))
    ok2 = np.flatnonzero(np.isfinite(ra2) & np.isfinite(dec2))
    empty = Pairs(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
    if ok1.size == 0 or ok2.size == 0:
        return empty
    c1 = SkyCoord(ra=ra1[ok1] * u.deg, dec=dec1[ok1] * u.deg)
    c2 = SkyCoord(ra=ra2[ok2] * u.deg, dec=dec2[ok2] * u.deg)
    i1, i2, sep, _ = search_around_sky(c1, c2, radius_arcsec * u.arcsec)
    i1 = ok1[i1].astype(np.int64)
    i2 = ok2[i2].astype(np.int64)
    sep = sep.to_value(u.arcsec)
    order = np.lexsort((i2, sep, i1))
    return Pairs(i1[order], i2[order], sep[order])


def best_match(ra1, dec1, ra2, dec2, radius_arcsec=1.0, rank=None, prefer="min", one_to_one=False):
    """One counterpart per source of catalogue 1.

    Parameters
    ----------
    ra1, dec1 : (n1,) float, deg
    ra2, dec2 : (n2,) float, deg
    radius_arcsec : float
    rank : (n2,) float or None
        Preference among several candidates within the radius, e.g. Gaia
        ``phot_g_mean_mag`` to keep the brightest (Wheeler+2020 §5.1). NaN ranks lose
        to finite ones; ties and ``rank=None`` fall back to the nearest.
    prefer : {'min', 'max'}
        Keep the candidate with the smallest or the largest rank.
    one_to_one : bool
        If True, a catalogue-2 source chosen by several catalogue-1 sources is kept
        only by the nearest of them; the others get no match (index -1). The
        ``duplicated`` flag still reports the conflict.

    Returns
    -------
    BestMatch
    """
    if prefer not in ("min", "max"):
        raise ParameterError(f"prefer must be 'min' or 'max', got {prefer!r}")
    n1 = np.asarray(ra1).shape[0]
    pairs = sky_match(ra1, dec1, ra2, dec2, radius_arcsec)
    index = np.full(n1, -1, dtype=np.int64)
    sep = np.full(n1, np.nan)
    n_matches = np.bincount(pairs.idx1, minlength=n1).astype(np.int64)
    duplicated = np.zeros(n1, dtype=bool)
    if pairs.idx1.size == 0:
        return BestMatch(index, sep, n_matches, duplicated)
    if rank is None:
        key = np.zeros(pairs.idx1.size)
    else:
        r = np.ma.filled(np.ma.asarray(rank, dtype=float), np.nan)
        if r.shape[0] != np.asarray(ra2).shape[0]:
            raise ShapeError(f"rank has {r.shape[0]} entries, catalogue 2 has {np.asarray(ra2).shape[0]}")
        key = r[pairs.idx2] if prefer == "min" else -r[pairs.idx2]
        key = np.where(np.isfinite(key), key, np.inf)
    order = np.lexsort((pairs.sep_arcsec, key, pairs.idx1))  # best candidate first per idx1
    i1s = pairs.idx1[order]
    first = np.ones(i1s.size, dtype=bool)
    first[1:] = i1s[1:] != i1s[:-1]
    chosen1 = i1s[first]
    chosen2 = pairs.idx2[order][first]
    chosen_sep = pairs.sep_arcsec[order][first]
    index[chosen1] = chosen2
    sep[chosen1] = chosen_sep
    # duplicates: several catalogue-1 sources chose the same catalogue-2 source
    counts = np.bincount(chosen2)
    dup = counts[chosen2] > 1
    duplicated[chosen1[dup]] = True
    if one_to_one and dup.any():
        o = np.lexsort((chosen_sep, chosen2))  # per catalogue-2 source, nearest first
        c2 = chosen2[o]
        keep = np.ones(c2.size, dtype=bool)
        keep[1:] = c2[1:] != c2[:-1]
        losers = chosen1[o][~keep]
        index[losers] = -1
        sep[losers] = np.nan
    return BestMatch(index, sep, n_matches, duplicated)


def id_match(ids1, ids2):
    """Rows of ``ids2`` holding each identifier of ``ids1``.

    Parameters
    ----------
    ids1 : (n1,) array of int or str
    ids2 : (n2,) array of int or str

    Returns
    -------
    index : (n1,) int
        Row in ``ids2`` (its first occurrence when repeated), -1 where absent.
        Masked or NaN identifiers never match.
    """
    a1 = np.ma.asarray(ids1)
    a2 = np.ma.asarray(ids2)
    v1 = np.ma.getdata(a1)
    v2 = np.ma.getdata(a2)
    bad1 = np.ma.getmaskarray(a1)
    bad2 = np.ma.getmaskarray(a2)
    if v1.dtype.kind == "f":
        bad1 = bad1 | ~np.isfinite(v1)
    if v2.dtype.kind == "f":
        bad2 = bad2 | ~np.isfinite(v2)
    if v1.dtype.kind in "US" or v2.dtype.kind in "US" or v1.dtype.kind == "O" or v2.dtype.kind == "O":
        v1 = v1.astype(str)
        v2 = v2.astype(str)
    index = np.full(v1.shape[0], -1, dtype=np.int64)
    good2 = np.flatnonzero(~bad2)
    if good2.size == 0:
        return index
    order = good2[np.argsort(v2[good2], kind="stable")]  # stable: first occurrence first
    sorted2 = v2[order]
    pos = np.searchsorted(sorted2, v1, side="left")
    pos_c = np.clip(pos, 0, sorted2.size - 1)
    hit = (pos < sorted2.size) & (sorted2[pos_c] == v1) & ~bad1
    index[hit] = order[pos_c[hit]]
    return index


def gaia_match(table, gaia_table, radius_arcsec=1.0, rank="phot_g_mean_mag", prefer="min", ra="ra", dec="dec", prefix="gaia_"):
    """Join the best Gaia counterpart of each row of ``table`` onto it.

    Wheeler+2020 §5.1: the brightest G source within 1″.

    Parameters
    ----------
    table : astropy Table or pandas DataFrame, n rows, with ``ra``, ``dec`` [deg]
    gaia_table : astropy Table or pandas DataFrame with ``ra``, ``dec`` [deg] and
        ``rank`` (default ``phot_g_mean_mag``)
    radius_arcsec : float
    rank : str or None
        Gaia column ranking several candidates (``None``: nearest).
    prefer : {'min', 'max'}
    ra, dec : str
        Coordinate column names (the same in both tables).
    prefix : str
        A Gaia column whose name already exists in ``table`` is added as
        ``prefix + name`` (e.g. ``gaia_ra``); the others keep their names.

    Returns
    -------
    astropy Table (pandas DataFrame if ``table`` is one), n rows in input order
        All input columns, every Gaia column (float columns NaN and other
        columns masked where there is no match), ``gaia_sep_arcsec`` (NaN where
        none), ``gaia_n_matches`` (candidates within the radius, 0 where none) and
        ``gaia_duplicated`` (the Gaia source is also matched to another row).
    """
    from astropy.table import MaskedColumn

    was_pandas = is_pandas(table)
    t = as_table(table) if was_pandas else as_table(table).copy(copy_data=False)
    g = as_table(gaia_table)
    require_columns(t, [ra, dec], what="table")
    require_columns(g, [ra, dec], what="gaia_table")
    if rank is not None and rank not in g.colnames:
        raise ColumnError(f"gaia_table lacks rank column {rank!r}; it has {g.colnames} (pass rank=None for the nearest)")
    m = best_match(t[ra], t[dec], g[ra], g[dec], radius_arcsec, rank=None if rank is None else g[rank], prefer=prefer)
    has = m.index >= 0
    take = np.where(has, m.index, 0)
    for name in g.colnames:
        out_name = prefix + name if name in t.colnames else name
        col = g[name]
        data = np.ma.getdata(col)
        if len(g) == 0:
            data = np.zeros(1, dtype=data.dtype)
            cmask = np.ones(1, dtype=bool)
        else:
            cmask = np.ma.getmaskarray(col)
        vals = data[take]
        miss = ~has | cmask[take]
        if vals.dtype.kind == "f":
            new = np.where(miss, np.nan, vals)
            t[out_name] = new
        else:
            t[out_name] = MaskedColumn(vals, mask=miss)
        t[out_name].unit = getattr(col, "unit", None)
        t[out_name].description = getattr(col.info, "description", None)
    t["gaia_sep_arcsec"] = m.sep_arcsec
    t["gaia_sep_arcsec"].unit = "arcsec"
    t["gaia_n_matches"] = m.n_matches
    t["gaia_duplicated"] = m.duplicated
    log.info("gaia_match: %s", m.summary())
    return t.to_pandas() if was_pandas else t
