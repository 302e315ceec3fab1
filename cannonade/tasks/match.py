"""``cannonade match``: a reference catalogue matched on the sky to the spectra of a store.

Each reference star gets the stored spectrum within the radius with the highest S/N
(Wheeler+2020 §2.1: the best visit of a star observed several times); a spectrum claimed by
several reference stars is ambiguous and none of them keeps it. The output is the matched
reference rows, every column kept, plus ``obj_id`` (the store's id: what ``cannonade train``
joins on), ``store_row``, ``sep_arcsec``, ``n_spectra`` (stored spectra within the radius) and
``snr_spectrum`` (the matched spectrum's S/N, for a cut on the training set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cannonade.exceptions import ConfigError, TrainingSetError
from cannonade.galaxy.crossmatch import best_match
from cannonade.provenance import provenance, provenance_cards
from cannonade.spectra.store import SpectraStore
from cannonade.tables import float_column, read_table, require_columns
from cannonade.util import atomic_path, check_output_file

__all__ = ["MatchReport", "match_catalogue"]


@dataclass
class MatchReport:
    path: Path
    n_reference: int
    n_matched: int
    n_ambiguous: int
    n_several: int

    def summary(self):
        return (f"{self.n_matched} of {self.n_reference} reference stars matched a stored spectrum "
                f"({self.n_several} have several, the best S/N kept; {self.n_ambiguous} ambiguous dropped) -> {self.path}")


def match_catalogue(catalogue, store, out, radius_arcsec=1.0, ra_column="ra", dec_column="dec"):
    """Match ``catalogue`` to ``store`` on the sky and write the matched rows to ``out``.

    Parameters
    ----------
    catalogue : str or Path
        The reference catalogue (FITS, CSV or Parquet) with ``ra_column``, ``dec_column`` in degrees.
    store : str or Path
        A spectra store whose spectra carry ``ra``, ``dec`` (the survey files' positions).
    out : str or Path
        ``.fits``, ``.csv`` or ``.parquet``.
    radius_arcsec : float

    Returns
    -------
    MatchReport

    Raises
    ------
    ColumnError
        ``ra_column``/``dec_column`` missing (named).
    TrainingSetError
        The store's spectra have no positions, or nothing matched.
    """
    if not radius_arcsec > 0:
        raise ConfigError(f"--radius must be > 0 arcsec, got {radius_arcsec}")
    out = Path(out)
    kind = out.name.lower()
    fmt = "fits" if kind.endswith((".fits", ".fits.gz")) else "parquet" if kind.endswith(".parquet") else "ascii.ecsv" if kind.endswith((".csv", ".ecsv")) else None
    if fmt is None:
        raise ConfigError(f"--out {out}: write the matched catalogue as .fits, .parquet or .csv")
    check_output_file(out, "--out")
    table = read_table(catalogue)
    require_columns(table, [ra_column, dec_column], what=str(catalogue))
    with SpectraStore(store) as st:
        meta = st.meta(columns=["obj_id", "ra", "dec", "snr"])  # not every column of a survey's store
    ra_s, dec_s = np.asarray(meta["ra"], float), np.asarray(meta["dec"], float)
    if not np.isfinite(ra_s).any():
        raise TrainingSetError(f"{store}: its spectra carry no sky positions (ra, dec); match by id instead (--id-column of cannonade train)")
    snr = np.nan_to_num(np.asarray(meta["snr"], float), nan=-np.inf)
    bm = best_match(float_column(table, ra_column, "deg"), float_column(table, dec_column, "deg"), ra_s, dec_s,
                    radius_arcsec, rank=-snr, prefer="min")
    idx = bm.index
    claimed = np.bincount(idx[idx >= 0], minlength=len(ra_s))
    ambiguous = (idx >= 0) & (claimed[np.maximum(idx, 0)] > 1)
    keep = (idx >= 0) & ~ambiguous
    if not keep.any():
        raise TrainingSetError(f"{catalogue}: none of its {len(table)} stars lies within {radius_arcsec} arcsec of a spectrum of {store}")
    out_t = table[keep]
    for name, values, unit, desc in (
        ("obj_id", np.asarray(meta["obj_id"]).astype(str)[idx[keep]], None, "id of the matched spectrum in the store"),
        ("store_row", idx[keep], None, "row of the matched spectrum in the store"),
        ("sep_arcsec", bm.sep_arcsec[keep], "arcsec", "separation from the matched spectrum"),
        ("n_spectra", bm.n_matches[keep], None, "stored spectra within the match radius (the best S/N one is matched)"),
        ("snr_spectrum", np.asarray(meta["snr"], float)[idx[keep]], None, "S/N of the matched spectrum (from the store)"),
    ):
        if name in out_t.colnames:
            raise ConfigError(f"{catalogue} already has a column {name!r}; rename it before matching")
        out_t[name] = values
        out_t[name].unit = unit
        out_t[name].description = desc
    prov = provenance(recipe="cannonade match", input_store=store, catalogue=str(catalogue), radius_arcsec=float(radius_arcsec))
    out_t.meta.update({k: v for k, v, _ in provenance_cards(prov)})
    with atomic_path(out) as tmp:
        out_t.write(tmp, format=fmt, overwrite=True)
    return MatchReport(out, len(table), int(keep.sum()), int(ambiguous.sum()), int(((bm.n_matches > 1) & keep).sum()))
