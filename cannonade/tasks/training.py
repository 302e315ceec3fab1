"""A training set from a labels table and a spectra store, joined by id.

The labels table (FITS, CSV or Parquet) has one row per reference star with an id column
matching the store's ``obj_id`` (what ``cannonade match`` writes, or the survey's own id).
A star with several stored spectra is trained on its highest-S/N one; the others are its
repeat visits (used to calibrate the errors). Every row that cannot be used is counted and
the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cannonade.exceptions import ColumnError, TrainingSetError
from cannonade.tables import colnames, float_column, read_table, suggest, text_column

__all__ = ["TrainingSet", "guess_id_column", "join_labels", "load_training_set"]

#: id columns tried, in order, when none is given
ID_CANDIDATES = ("obj_id", "obsid", "id", "object_id", "source_id", "sobject_id", "apogee_id", "star_id", "designation")


@dataclass
class TrainingSet:
    """Labels joined to stored spectra.

    Attributes
    ----------
    rows : (N,) int
        Store row of each training star's spectrum (its highest-S/N one).
    labels : (N, L) float
    label_errors : (N, L) float
        The reference labels' 1σ errors (0 where the table has none).
    ids : (N,) str
        The stars' ids.
    table_rows : (N,) int
        Their rows in the labels table.
    repeat_rows, repeat_ids : (R,) int, (R,) str
        Every stored spectrum of a training star that has several (for the error calibration).
    counts : dict
        ``n_table``, ``n_matched``, ``n_unmatched``, ``n_bad_labels``, ``n_duplicate_ids``,
        ``n_with_repeats``.
    id_column, label_names : str, list of str
    """

    rows: np.ndarray
    labels: np.ndarray
    label_errors: np.ndarray
    ids: np.ndarray
    table_rows: np.ndarray
    repeat_rows: np.ndarray
    repeat_ids: np.ndarray
    id_column: str
    label_names: list
    counts: dict = field(default_factory=dict)

    def summary(self):
        c = self.counts
        return (f"{c['n_matched']} of {c['n_table']} labelled stars matched a stored spectrum by {self.id_column!r} "
                f"({c['n_unmatched']} not in the store, {c['n_bad_labels']} with a missing label, "
                f"{c['n_duplicate_ids']} duplicate ids skipped; {c['n_with_repeats']} have repeat spectra)")


def guess_id_column(table, store_ids):
    """The column of ``table`` whose values match the most store ids (None if none matches).

    Known id names (:data:`ID_CANDIDATES`) are tried first; the other columns only when none
    of those matches.
    """
    ids = np.asarray(store_ids).astype(str)
    names = colnames(table)
    known = [n for n in ID_CANDIDATES if n in names]
    for group in (known, [n for n in names if n not in ID_CANDIDATES]):
        hits = {}
        for name in group:
            try:
                values = text_column(table, name)
            except Exception:  # not a text-like column (arrays, objects): not an id
                continue
            hits[name] = int(np.isin(values, ids).sum())
        if hits and max(hits.values()) > 0:
            return max(hits, key=hits.get)
    return None


def join_labels(table, store_ids, store_snr, label_names, id_column=None, error_prefix="e_", where="labels table",
                missing="drop"):
    """Join a labels table to the store's spectra by id.

    Parameters
    ----------
    table : astropy Table or pandas DataFrame
    store_ids : (S,) str
        The store's ``obj_id`` column.
    store_snr : (S,) float
        The stored spectra's S/N (chooses among several spectra of one id).
    label_names : list of str
        Columns of ``table``.
    id_column : str, optional
        Guessed (:func:`guess_id_column`) when None.
    error_prefix : str
        Label errors are the columns ``error_prefix + label`` where present.
    missing : {"drop", "impute"}
        A star with some labels missing: dropped (counted), or kept with NaN there for the
        model to impute from its spectrum (``CannonModel.fit(missing="impute")``); a star
        with every label missing is dropped either way.

    Returns
    -------
    TrainingSet

    Raises
    ------
    ColumnError
        A label or the id column is not in the table (names it, suggests the closest).
    TrainingSetError
        No id column matches the store, or no labelled star matches.
    """
    names = colnames(table)
    for lab in label_names:
        if lab not in names:
            raise ColumnError(f"{where}: no label column {lab!r}{suggest(lab, names)}; columns: {', '.join(names[:30])}")
    store_ids = np.asarray(store_ids).astype(str)
    if id_column is None:
        id_column = guess_id_column(table, store_ids)
        if id_column is None:
            raise TrainingSetError(f"{where}: no column matches the store's spectrum ids (obj_id, e.g. {store_ids[:1].tolist()}); "
                                   "pass --id-column, or match the catalogue to the store first (cannonade match)")
    elif id_column not in names:
        raise ColumnError(f"{where}: no id column {id_column!r}{suggest(id_column, names)}")
    ids = np.char.strip(text_column(table, id_column).astype(str))
    labels = np.column_stack([float_column(table, lab) for lab in label_names]) if len(ids) else np.zeros((0, len(label_names)))
    errors = np.column_stack([
        np.nan_to_num(float_column(table, error_prefix + lab), nan=0.0) if error_prefix + lab in names else np.zeros(len(ids))
        for lab in label_names
    ]) if len(ids) else np.zeros((0, len(label_names)))
    # the best-S/N stored spectrum of each id, and every spectrum of ids with several
    order = np.lexsort((np.arange(len(store_ids)), -np.nan_to_num(np.asarray(store_snr, float), nan=-np.inf), store_ids))
    sid = store_ids[order]
    first = np.r_[True, sid[1:] != sid[:-1]]
    uniq, best_row = sid[first], order[first]
    n_per = np.diff(np.r_[np.flatnonzero(first), len(sid)])
    pos = np.searchsorted(uniq, ids)
    pos_c = np.minimum(pos, max(len(uniq) - 1, 0))
    matched = (len(uniq) > 0) & (uniq[pos_c] == ids) if len(uniq) else np.zeros(len(ids), bool)
    good = np.all(np.isfinite(labels), axis=1) if missing == "drop" else np.any(np.isfinite(labels), axis=1)
    _, first_id = np.unique(ids, return_index=True)
    dup = np.ones(len(ids), dtype=bool)
    dup[first_id] = False
    use = matched & good & ~dup
    if not use.any():
        raise TrainingSetError(f"{where}: none of its {len(ids)} stars has finite labels {label_names} and a stored "
                               f"spectrum with the same {id_column!r}")
    rows = best_row[pos_c[use]]
    has_rep = n_per[pos_c[use]] > 1
    rep_ids = set(ids[use][has_rep].tolist())
    rep_mask = np.isin(store_ids, list(rep_ids)) if rep_ids else np.zeros(len(store_ids), bool)
    counts = dict(n_table=len(ids), n_matched=int(use.sum()), n_unmatched=int((~matched & ~dup).sum()),
                  n_bad_labels=int((matched & ~good & ~dup).sum()), n_duplicate_ids=int(dup.sum()),
                  n_with_repeats=int(has_rep.sum()))
    return TrainingSet(rows=rows, labels=labels[use], label_errors=errors[use], ids=ids[use], table_rows=np.flatnonzero(use),
                       repeat_rows=np.flatnonzero(rep_mask), repeat_ids=store_ids[rep_mask], id_column=id_column,
                       label_names=list(label_names), counts=counts)


def load_training_set(labels_path, store, label_names, id_column=None, error_prefix="e_", missing="drop"):
    """:func:`join_labels` of a labels file and an open :class:`~cannonade.spectra.store.SpectraStore`."""
    table = read_table(labels_path)
    meta = store.meta(columns=["obj_id", "snr"])  # not every column of a survey's store
    return join_labels(table, np.asarray(meta["obj_id"]).astype(str), np.asarray(meta["snr"], float), label_names,
                       id_column=id_column, error_prefix=error_prefix, where=str(labels_path), missing=missing)


def training_data(labels_path, store_path, label_names, id_column=None, error_prefix="e_", missing="drop"):
    """Everything a fit needs from a labels file and a store.

    Returns
    -------
    ts : TrainingSet
    flux, ivar : (N, P) float
        The training stars' spectra, rows as ``ts``.
    setup : SpectralSetup
        How the store's spectra were prepared (kept by the model, checked by ``infer``).
    """
    from cannonade.cannon.spectral_setup import SpectralSetup
    from cannonade.spectra.store import SpectraStore

    with SpectraStore(store_path) as st:
        ts = load_training_set(labels_path, st, list(label_names), id_column=id_column, error_prefix=error_prefix,
                               missing=missing)
        flux, ivar = st.read_rows(ts.rows)
        setup = SpectralSetup.from_store(st)
    return ts, flux, ivar, setup


def parse_label_names(text):
    """``"teff,logg,fe_h"`` -> ``['teff', 'logg', 'fe_h']`` (blanks ignored; TrainingSetError if empty or repeated)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise TrainingSetError(f"--labels {text!r}: give the label columns, comma-separated (e.g. teff,logg,fe_h)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise TrainingSetError(f"--labels {text!r}: repeated label(s) {dup}")
    return names
