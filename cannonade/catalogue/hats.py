"""The per-star catalogue as HEALPix-partitioned Parquet in the HATS layout (LSDB's format).

:func:`write_hats` writes a catalogue table as a HATS catalogue (the IVOA note "HATS:
Hierarchical Adaptive Tiling Scheme", https://www.ivoa.net/documents/Notes/HATS/), the
layout LSDB opens, so the catalogue can be cross-matched with Gaia (or any other HATS
catalogue) at scale::

    <name>/
      hats.properties, properties        catalogue properties (name, type, ra/dec columns, rows, ...)
      partition_info.csv                 Norder,Npix of every partition
      skymap.fits                        row counts on a HEALPix map (order skymap_order)
      dataset/_common_metadata           the Parquet schema, units and descriptions included
      dataset/_metadata                  every partition's row-group footers
      dataset/Norder=K/Dir=D/Npix=P.parquet

Each partition is the rows inside one HEALPix pixel (nested scheme, order K, number P), sorted
by the spatial index ``_healpix_29`` (the first column: the order-29 pixel of each row). Orders
are adaptive: a pixel holding more than ``max_rows`` rows is split into its four children, from
order 0 down to ``max_order``. Every partition file carries the same schema and metadata as
:func:`cannonade.catalogue.write_catalogue`'s Parquet file (units and descriptions in each
field's metadata, the ``cannonade`` and ``cannonade.provenance`` keys, astropy's keys), so
each one reads back with units through :func:`cannonade.catalogue.read_catalogue` too.

The ``hats`` package is an optional extra: ``pip install cannonade[hats]``. The HATS files
themselves (properties, ``partition_info.csv``, ``_metadata``, ``_common_metadata``, the
skymap) are written by hats' own writers. See ``docs/catalogue.md`` ("HATS output").
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from cannonade._version import __version__
from cannonade.catalogue.schemas import DIMENSIONLESS
from cannonade.catalogue.writers import arrow_table, conform_table, provenance_record
from cannonade.exceptions import CatalogueError, ParameterError
from cannonade.util import atomic_dir, remove_temporaries_of

__all__ = ["HATS_INSTALL", "SPATIAL_INDEX_COLUMN", "remove_leftovers", "write_hats"]

log = logging.getLogger(__name__)

#: What to install for :func:`write_hats`.
HATS_INSTALL = "pip install cannonade[hats]"
#: The spatial index column HATS readers (LSDB) expect: each row's HEALPix pixel at order 29.
SPATIAL_INDEX_COLUMN = "_healpix_29"
SPATIAL_INDEX_ORDER = 29
#: The files that mark a directory as a HATS catalogue (what ``overwrite=True`` may replace).
_PROPERTIES_FILES = ("hats.properties", "properties")


def _import_hats():
    try:
        import hats
    except ImportError as exc:
        raise CatalogueError(f"writing a HATS catalogue needs the optional 'hats' package ({exc}): {HATS_INSTALL}") from None
    return hats


def _check_target(path, overwrite):
    """Refuse an existing ``path`` unless ``overwrite`` and it is a HATS catalogue (or an empty directory)."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise CatalogueError(f"{path} already exists; pass overwrite=True to replace the HATS catalogue there")
    if path.is_symlink() or not path.is_dir():
        raise CatalogueError(f"{path} exists and is not a directory; overwrite=True replaces only a HATS catalogue")
    if any(path.iterdir()) and not any((path / name).is_file() for name in _PROPERTIES_FILES):
        raise CatalogueError(f"{path} is a directory that is not a HATS catalogue (no {' or '.join(_PROPERTIES_FILES)} "
                             "file); overwrite=True replaces only a HATS catalogue")


def remove_leftovers(path):
    """Remove the temporary folders an interrupted :func:`write_hats` of ``path`` left beside it.

    A killed write leaves its hidden temporary folder (``.<name>.XXXXXXXX.tmp``), deleted here; a
    kill between the two renames of the swap leaves the previous catalogue moved aside
    (``.<name>.XXXXXXXX.old``), put back at ``path`` when nothing is there, else deleted
    (:func:`cannonade.util.remove_temporaries_of`). The visible ``<name>.XXXXXXXX.tmp`` and
    ``<name>.XXXXXXXX.old/<name>`` folders of earlier versions are handled alike. Run it only when
    no other process writes ``path``. Returns the folders removed (or put back).
    """
    path = Path(path)
    removed = remove_temporaries_of(path)
    if not path.parent.is_dir():
        return removed
    legacy = re.compile(re.escape(f"{path.name}.") + r"[a-z0-9_]{8}\.(tmp|old)")
    for p in sorted(path.parent.iterdir()):
        if not (legacy.fullmatch(p.name) and p.is_dir() and not p.is_symlink()):
            continue
        if p.name.endswith(".old") and (p / path.name).is_dir() and not os.path.lexists(path):
            os.replace(p / path.name, path)  # killed in the swap: the previous catalogue goes back
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _positions(t, ra_column, dec_column, path):
    """ra, dec [deg] as float arrays; CatalogueError for a missing column, another unit,
    or any non-finite (or masked) position or |dec| > 90 deg (count and first row)."""
    import astropy.units as u

    missing = [c for c in (ra_column, dec_column) if c not in t.colnames]
    if missing:
        raise CatalogueError(f"HATS catalogue {path}: the table has no position column(s) {missing} "
                             f"(ra_column={ra_column!r}, dec_column={dec_column!r}); columns are {t.colnames}")
    out = []
    for name in (ra_column, dec_column):
        col = t[name]
        if col.unit is not None and col.unit not in (u.deg, u.dimensionless_unscaled):
            raise CatalogueError(f"HATS catalogue {path}: column {name!r} has unit {col.unit}; HATS positions are in degrees")
        data = np.ma.getdata(col)
        if data.dtype.kind not in "fiu" or data.ndim != 1:
            raise CatalogueError(f"HATS catalogue {path}: column {name!r} has dtype {data.dtype} and {data.ndim} "
                                 "dimension(s); a position is one number per row, in degrees")
        out.append(np.where(np.ma.getmaskarray(col), np.nan, data.astype(np.float64)))
    ra, dec = out
    bad = ~(np.isfinite(ra) & np.isfinite(dec)) | (np.abs(np.nan_to_num(dec)) > 90)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CatalogueError(
            f"HATS catalogue {path}: {int(bad.sum())} of {len(t)} rows have no valid position in "
            f"({ra_column!r}, {dec_column!r}) (NaN, masked, infinite or |dec| > 90 deg), the first at row {first} "
            f"({ra_column}={ra[first]}, {dec_column}={dec[first]}); a HATS partition is a patch of sky, so every "
            "row needs one: drop those rows or give them positions")
    return ra, dec


def partition_orders(index29, max_rows, max_order, min_order=0):
    """Adaptive HEALPix partitions: (order, pixel) of each row, from its order-29 spatial index.

    A pixel is kept whole when it holds at most ``max_rows`` rows (or at ``max_order``);
    otherwise its rows go to its four children, one order deeper, starting at ``min_order``.
    Empty pixels have no partition. The partitions never overlap, so sorted by ``index29``
    each one's rows are contiguous.

    Returns
    -------
    order, pixel : int64 arrays, one value per row
    """
    index29 = np.asarray(index29, dtype=np.int64)
    order = np.full(len(index29), -1, dtype=np.int64)
    pixel = np.full(len(index29), -1, dtype=np.int64)
    pending = np.arange(len(index29))
    for k in range(min_order, max_order + 1):
        if not len(pending):
            break
        pix = index29[pending] >> (2 * (SPATIAL_INDEX_ORDER - k))
        _, inverse, counts = np.unique(pix, return_inverse=True, return_counts=True)
        done = (counts[inverse] <= max_rows) | (k == max_order)
        order[pending[done]] = k
        pixel[pending[done]] = pix[done]
        pending = pending[~done]
    return order, pixel


def _parquet_kwargs(hats, schema):
    """hats' own Parquet writing options (encodings, statistics, page index) where it has them."""
    kwargs = getattr(hats.io.file_io, "get_parquet_write_table_kwargs", None)
    return kwargs(schema) if kwargs is not None else {}


def _write_tree(hats, at, index29, order, pixel, base, catalog_name, ra_column, dec_column, max_rows, max_order,
                skymap_order, schema):
    """Write the whole HATS catalogue of the sorted arrow table ``at`` into the (new) directory ``base``."""
    import pyarrow.parquet as pq
    from hats.catalog import PartitionInfo, TableProperties
    from hats.io import paths
    from hats.pixel_math import HealpixPixel

    try:
        from hats.io.skymap import write_skymap
    except ImportError:  # an older hats: no skymap
        write_skymap = None

    n = len(at)
    pixels, counts = [], []
    if n:
        starts = np.flatnonzero(np.r_[True, (order[1:] != order[:-1]) | (pixel[1:] != pixel[:-1])])
        ends = np.r_[starts[1:], n]
        kwargs = _parquet_kwargs(hats, at.schema)
        for a, b in zip(starts.tolist(), ends.tolist()):
            hp_pixel = HealpixPixel(int(order[a]), int(pixel[a]))
            target = Path(paths.pixel_catalog_file(base, hp_pixel).path)
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(at.slice(a, b - a), target, **kwargs)
            pixels.append(hp_pixel)
            counts.append(b - a)
        hats.io.write_parquet_metadata(base)
    else:  # no partitions: the schema alone (what LSDB writes for an empty catalogue)
        (base / paths.DATASET_DIR).mkdir(parents=True)
        pq.write_metadata(at.schema, Path(paths.get_parquet_metadata_pointer(base).path))
        pq.write_metadata(at.schema, Path(paths.get_common_metadata_pointer(base).path))
    PartitionInfo.from_healpix(pixels).write_to_file(catalog_path=base)

    optional = {"healpix_column": SPATIAL_INDEX_COLUMN, "healpix_order": SPATIAL_INDEX_ORDER}
    if write_skymap is not None:
        if skymap_order is None:
            skymap_order = max(max((p.order for p in pixels), default=0), 8)  # LSDB's choice
        hist = np.bincount(index29 >> (2 * (SPATIAL_INDEX_ORDER - skymap_order)), minlength=12 * 4**skymap_order)
        write_skymap(hist, base)
        optional["skymap_order"] = skymap_order

    props = {
        "catalog_name": catalog_name,
        "catalog_type": "object",
        "total_rows": n,
        "ra_column": ra_column,
        "dec_column": dec_column,
        "hats_max_rows": max(counts, default=0),
        "cannonade_schema": schema.name,
        "cannonade_max_rows": max_rows,
        "cannonade_max_order": max_order,
    }
    # properties this hats version knows (an older one would write them under their Python names)
    props.update({k: v for k, v in optional.items() if k in TableProperties.model_fields})
    new_provenance = getattr(TableProperties, "new_provenance_dict", None)
    if new_provenance is not None:
        props.update(new_provenance(base, builder=f"cannonade v{__version__}"))
    TableProperties(**props).to_properties_file(base)
    return pixels, counts


def _describe_common_metadata(hats, base, at):
    """Units and descriptions also as IVOA VOParquet metadata in ``_common_metadata``, where the
    installed hats writes it; a unit the VOUnit standard cannot express (``dex``) is left out there
    (it stays in the field's metadata)."""
    import astropy.units as u

    write_vo = getattr(getattr(hats.io, "parquet_metadata", None), "write_voparquet_in_common_metadata", None)
    if write_vo is None:
        return
    units, descriptions = {}, {}
    for f in at.schema:
        md = f.metadata or {}
        if md.get(b"unit"):
            unit = u.Unit(md[b"unit"].decode(), parse_strict="silent")
            if isinstance(unit, u.UnrecognizedUnit):
                continue
            try:
                unit.to_string("vounit")
            except ValueError:
                continue
            units[f.name] = unit
        if md.get(b"description"):
            descriptions[f.name] = md[b"description"].decode()
    write_vo(base, field_units=units, field_descriptions=descriptions)


def write_hats(table, path, catalog_name=None, ra_column="ra", dec_column="dec", max_rows=1_000_000, max_order=10,
               schema="wheeler2020", label_names=None, provenance=None, overwrite=False, skymap_order=None):
    """Write a catalogue as a HATS catalogue: HEALPix-partitioned Parquet that LSDB opens.

    The table is conformed to its schema exactly as :func:`cannonade.catalogue.write_catalogue`
    does (column order, dtypes, units, descriptions), the spatial index ``_healpix_29`` is put
    first, and the rows are split into adaptive HEALPix partitions of at most ``max_rows`` rows
    (see the module docstring for the layout). The catalogue is written into a hidden temporary
    directory beside ``path`` (``.<name>.XXXXXXXX.tmp``) and renamed onto it at the end
    (:func:`cannonade.util.atomic_dir`): a failing write leaves ``path`` as it was, and the next
    write removes what a killed one left (:func:`remove_leftovers`).

    Parameters
    ----------
    table : astropy Table or pandas DataFrame
        Per-star rows with positions in degrees.
    path : str or Path
        The catalogue directory (e.g. ``catalogue/per_star_hats``).
    catalog_name : str, optional
        The HATS catalogue name (``obs_collection``); default: the directory's name.
    ra_column, dec_column : str
        The position columns [deg]. Every row needs a finite position with |dec| <= 90:
        rows without one are refused (the message gives their count and the first row), as a
        HATS partition is a patch of sky; drop them first or give them positions.
    max_rows : int
        Most rows in one partition (a pixel with more is split, down to ``max_order``).
    max_order : int
        Deepest HEALPix order of a partition (0-29); a pixel at this order keeps all its rows.
    schema, label_names, provenance
        As in :func:`cannonade.catalogue.write_catalogue` (the provenance goes into every
        partition file's metadata, key ``cannonade.provenance``).
    overwrite : bool
        Replace an existing HATS catalogue (a directory with a ``properties`` file) at ``path``.
    skymap_order : int, optional
        Order of ``skymap.fits``; default: the deepest partition order, at least 8 (as LSDB).

    Returns
    -------
    Path
        The catalogue directory.

    Raises
    ------
    CatalogueError
        The ``hats`` package is missing (``pip install cannonade[hats]``); ``path`` exists and
        ``overwrite`` is False, or it is not a HATS catalogue; a position column is missing,
        not in degrees, or not finite for some row; or anything :func:`write_catalogue` refuses.
    ParameterError
        ``max_rows`` < 1, or ``max_order``/``skymap_order`` outside 0-29.
    DiskFullError
        The disk (or quota) filled up while writing: names ``path``; the temporary directory is
        removed and the previous catalogue kept.
    """
    hats = _import_hats()
    from hats.pixel_math.spatial_index import compute_spatial_index

    if int(max_rows) < 1:
        raise ParameterError(f"max_rows must be >= 1, got {max_rows}")
    for name, value in (("max_order", max_order), ("skymap_order", skymap_order)):
        if value is not None and not 0 <= int(value) <= SPATIAL_INDEX_ORDER:
            raise ParameterError(f"{name} must be in 0-{SPATIAL_INDEX_ORDER}, got {value}")
    path = Path(path)
    stale = remove_leftovers(path)  # of a killed write (a catalogue moved aside goes back first)
    if stale:
        log.info("removed %d temporary folder(s) left by an interrupted write of %s (%s%s)", len(stale), path,
                 stale[0].name, ", ..." if len(stale) > 1 else "")
    _check_target(path, overwrite)
    catalog_name = str(catalog_name) if catalog_name else path.name

    t, s = conform_table(table, schema, label_names, path)
    if SPATIAL_INDEX_COLUMN in t.colnames:  # derived from the positions: recomputed
        t.remove_column(SPATIAL_INDEX_COLUMN)
    ra, dec = _positions(t, ra_column, dec_column, path)
    index29 = np.asarray(compute_spatial_index(ra, dec), dtype=np.int64) if len(t) else np.zeros(0, np.int64)
    t.add_column(index29, name=SPATIAL_INDEX_COLUMN, index=0)
    t[SPATIAL_INDEX_COLUMN].unit = DIMENSIONLESS
    t[SPATIAL_INDEX_COLUMN].description = ("HATS spatial index: nested HEALPix pixel of (ra, dec) at order 29 "
                                           "(its partition's pixel is this >> 2*(29 - Norder))")
    sort = np.argsort(index29, kind="stable")
    t = t[sort]
    index29 = index29[sort]
    order, pixel = partition_orders(index29, int(max_rows), int(max_order))
    at = arrow_table(t, s, provenance_record(t, provenance))

    # written into a hidden temporary folder beside path and swapped in (util.atomic_dir): a failing write,
    # a full disk (DiskFullError naming the catalogue) or a kill leaves the previous catalogue as it was
    with atomic_dir(path, "HATS catalogue") as tmp:
        pixels, counts = _write_tree(hats, at, index29, order, pixel, tmp, catalog_name, ra_column, dec_column,
                                     int(max_rows), int(max_order), skymap_order, s)
        if pixels:
            _describe_common_metadata(hats, tmp, at)
    orders = sorted({p.order for p in pixels})
    log.info("wrote HATS catalogue %s: %d rows in %d partitions (orders %s, at most %d rows each)",
             path, len(t), len(pixels), orders, max(counts, default=0))
    return path
