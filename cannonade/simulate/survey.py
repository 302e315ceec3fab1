"""``simulate_survey``: a mock survey written to disk in the real file layouts.

Output layout (kept stable: the pipeline depends on it)::

    OUT/manifest.json
    OUT/lamost/spectra/spec-<lmjd>-<planid>_sp<spid>-<fiberid>.fits.gz   (lamost-galah)
    OUT/lamost/catalogue.fits
    OUT/galah/spectra/<sobject_id><ccd>.fits.gz                          (4 CCD files per star)
    OUT/galah/catalogue.fits
    OUT/apogee/spectra/apStar-r12-<APOGEE_ID>.fits.gz, OUT/apogee/allStar.fits   (apogee-galah)
    OUT/galah/allspec.fits, OUT/clusters/members.txt, OUT/clusters/clusters.csv     (apogee-galah)
    OUT/gaia/catalogue.fits
    OUT/truth/stars.fits, OUT/truth/observations.fits

Spectrum files are gzipped FITS (:data:`SPECTRUM_SUFFIX`; the readers and astropy read them as
they are, and real LAMOST ships ``.fits.gz``); every catalogue column naming a file (LAMOST
``filename``, APOGEE ``FILE``, truth ``observations.fits`` ``filename``) gives the ``.fits.gz`` name.

Stars are simulated, observed and written in chunks (each with its own seeded
random stream), so memory is bounded and the same seed gives byte-identical files.
apogee-galah chunks run in parallel worker processes (``workers``); their catalogue rows are
appended in chunk order, so the files do not depend on the number of workers.
"""

from __future__ import annotations

import json
import os

import numpy as np

from cannonade.exceptions import ConfigError
from cannonade.execution import get_backend
from cannonade.galaxy.dynamics import R0_KPC, V_SUN_KMS, Z_SUN_KPC, circular_speed
from cannonade.simulate import catalogues as cat
from cannonade.simulate.apogee_files import write_apogee_chunk
from cannonade.simulate.formation import stellar_arrays
from cannonade.simulate.galah_files import write_galah_chunk
from cannonade.simulate.lamost_files import write_lamost_chunk
from cannonade.simulate.layout import (
    GAIA_COLUMNS,
    LAMOST_COLUMNS,
    OBS_COLUMNS,
    ORIGIN,
    apogee_columns,
    galah_columns,
    truth_columns,
)
from cannonade.simulate.population import (INTRINSIC_XFE_SCATTER_SCALE, NAMED_CLUSTERS, NamedCluster, named_cluster_members,
                                           simulate_population)
from cannonade.simulate.realism import REFERENCE_ERROR_LABELS, SYSTEMATIC_LABELS, as_realism, draw_error_factors
from cannonade.simulate.systematics import CROSS_LABELS, as_systematics, cross_survey_systematics
from cannonade.simulate.writers import FitsTableWriter, card
from cannonade.util import atomic_path, check_output_dir, make_dirs, progress

__all__ = ["simulate_survey", "PRESETS", "SPECTRUM_SUFFIX", "APOGEE_GALAH_STAGES", "APOGEE_ONLY_GIANT_WEIGHT",
           "CLUSTER_COMMON_FRACTION"]

PRESETS = ("lamost-galah", "apogee-galah")
SPECTRUM_SUFFIX = ".fits.gz"  # every mock spectrum file (gzip-compressed FITS)
CHUNK = 2000  # stars per chunk (fixed: part of the seeded stream definition)
_FRAME = (f"cannonade.galaxy.dynamics.galactocentric_frame (Wheeler+2020): Sun at (x, y, z) = "
          f"(-{R0_KPC:g}, 0, {Z_SUN_KPC:g}) kpc, (U, V, W) = {tuple(V_SUN_KMS)} km/s; discs rotate with the "
          f"MWPotential2014 circular speed less an asymmetric drift")
_FRACTIONS = ("reference_fraction", "repeat_fraction", "corrupt_fraction", "cluster_fraction", "binary_fraction")
_AG_FRACTIONS = ("common_fraction", "apogee_only_fraction", "galah_repeat_fraction", "galah_missing_alpha_fraction")
#: apogee-galah field stars: fractions of dwarfs, subgiants, RGB and red-clump stars (before the survey selection)
APOGEE_GALAH_STAGES = (0.36, 0.10, 0.35, 0.19)
#: apogee-galah: APOGEE-only field stars are drawn from the non-common ones with this weight for giants (1 for
#: dwarfs), so that they are mostly giants and the GALAH-only stars (the rest) mostly dwarfs
APOGEE_ONLY_GIANT_WEIGHT = 6.0
#: apogee-galah: this fraction of a named cluster's members are common stars; of the rest, giants are
#: APOGEE-only and dwarfs GALAH-only
CLUSTER_COMMON_FRACTION = 0.7


def _chunk_rng(seed, chunk, stream):
    """Independent, reproducible random stream per (seed, chunk, purpose)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(chunk), int(stream)]))


def _survey_rng(seed, stream):
    """A survey-wide stream (drawn once, independent of the chunking); the spawn key keeps it apart
    from every ``_chunk_rng``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)], spawn_key=(1,)))


def _version():
    from cannonade._version import __version__

    return __version__


def simulate_survey(preset="lamost-galah", n_stars=500, seed=0, out="mock_survey", reference_fraction=0.06,
                    repeat_fraction=0.10, corrupt_fraction=0.04, cluster_fraction=0.04, binary_fraction=0.04,
                    chunk_size=CHUNK, show_progress=None, realism=None, common_fraction=0.4, apogee_only_fraction=0.3,
                    galah_repeat_fraction=0.1, galah_missing_alpha_fraction=0.1, systematics=None, clusters=None,
                    workers=None):
    """Simulate a mock survey and write it in the real file layouts.

    Parameters
    ----------
    preset : {'lamost-galah', 'apogee-galah'}
        'lamost-galah': every star gets LAMOST spectra (a ``repeat_fraction`` of them
        repeat visits); a ``reference_fraction`` (brightness-weighted) are also observed
        by GALAH. 'apogee-galah' (Nandakumar+2022): common APOGEE + GALAH stars, APOGEE-only stars
        (mostly giants) and GALAH-only stars (mostly dwarfs), each survey's catalogue with its own label
        systematics (``systematics``), GALAH repeat exposures and named open and globular clusters.
    n_stars : int
    seed : int
    out : str or Path
        Output directory (created).
    reference_fraction : float
        Fraction of stars in the GALAH reference set (lamost-galah; ~6 % as in the
        LAMOST x GALAH overlap).
    repeat_fraction : float
        Fraction of LAMOST stars with repeat visits.
    corrupt_fraction : float
        Fraction of GALAH reference stars given badly wrong labels (recorded in truth).
    cluster_fraction, binary_fraction : float
        Open-cluster members and wide-binary members, as fractions of all stars (apogee-galah: members
        of the named ``clusters``, split evenly between them).
    chunk_size : int
        Stars per chunk (memory bound). Part of the random-stream definition: keep the
        default for reproducible files.
    show_progress : bool, optional
    realism : Realism, dict, bool or None
        The calibration-relevant imperfections of :mod:`cannonade.simulate.realism`: per-visit
        flux-calibration errors and sky residuals in the LAMOST/APOGEE spectra, dwarf Teff
        systematics of the GALAH abundances and imperfect reported GALAH errors. None/True:
        the defaults of :class:`~cannonade.simulate.realism.Realism`; False: all off; a dict:
        Realism fields. Recorded in the truth and in the manifest (``realism``).
    common_fraction : float
        apogee-galah: fraction of the stars observed by both surveys (exactly ``round(f * n)`` per chunk).
    apogee_only_fraction : float
        apogee-galah: fraction observed by APOGEE only (mostly giants, :data:`APOGEE_ONLY_GIANT_WEIGHT`); the
        rest, ``1 - common_fraction - apogee_only_fraction``, by GALAH only.
    galah_repeat_fraction : float
        apogee-galah: fraction of the GALAH stars with a second exposure (``galah/allspec.fits``).
    galah_missing_alpha_fraction : float
        apogee-galah: fraction of the GALAH rows whose ``alpha_fe`` is NaN with ``flag_alpha_fe = 1``.
    systematics : SurveySystematics, dict, bool or None
        apogee-galah: the APOGEE − GALAH label systematics (:mod:`cannonade.simulate.systematics`; None/True:
        defaults, False: off; off too with ``realism=False``). In the manifest (``survey_systematics``).
    clusters : sequence of NamedCluster or of names, optional
        apogee-galah: the named clusters (default :data:`~cannonade.simulate.population.NAMED_CLUSTERS`);
        their member lists go to ``OUT/clusters/``.
    workers : int, optional
        apogee-galah: chunks simulated in parallel processes (default: one per CPU core, at most one per
        chunk). The files do not depend on it. lamost-galah runs serially (its chunks share running
        counters of file names).

    Returns
    -------
    dict
        The manifest (also written to ``OUT/manifest.json``).
    """
    params = dict(reference_fraction=reference_fraction, repeat_fraction=repeat_fraction,
                  corrupt_fraction=corrupt_fraction, cluster_fraction=cluster_fraction, binary_fraction=binary_fraction)
    n_stars = _check_arguments(preset, n_stars, params)
    realism = as_realism(realism)
    params["realism"] = realism
    params["error_factors"] = draw_error_factors(realism, _survey_rng(seed, 0))
    out = check_output_dir(out, "mock survey directory")
    lamost = preset == "lamost-galah"
    if not lamost:
        params.update(_apogee_galah_parameters(common_fraction, apogee_only_fraction, galah_repeat_fraction,
                                               galah_missing_alpha_fraction, systematics, clusters, realism))
    ver = _version()
    writers = _open_writers(out, preset, seed, ver, lamost)
    counts = dict(stars=0, reference_stars=0, corrupted=0, lamost_spectra=0, repeat_visit_stars=0,
                  galah_spectra=0, apogee_spectra=0, apogee_visits=0, clusters=0, cluster_members=0, binaries=0)
    if not lamost:
        counts.update(common=0, apogee_only=0, galah_only=0, galah_repeat_stars=0)
    state = {"lamost": 0, "galah": 0}  # spectra written so far (define file names and ids)
    bar_kw = dict(total=n_stars, desc=f"simulate {preset}", disable=None if show_progress is None else not show_progress)
    try:
        if lamost:
            bar = progress(**bar_kw)
            try:
                for ci, c0 in enumerate(range(0, n_stars, int(chunk_size))):
                    m = min(int(chunk_size), n_stars - c0)
                    _simulate_lamost_galah_chunk(out, seed, ci, c0, m, params, writers, state, counts)
                    bar.update(m)
            finally:
                bar.close()
        else:
            _run_apogee_galah_chunks(out, seed, n_stars, int(chunk_size), params, writers, counts, bar_kw, workers)
        for key in list(writers):
            writers[key].close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    obs_tab = _read_obs(out / "truth" / "observations.fits")
    if lamost:
        lam = obs_tab[obs_tab["survey"] == "lamost"]
        _, per_star = np.unique(lam["star_id"], return_counts=True)
        counts["repeat_visit_stars"] = int((per_star > 1).sum())
    else:
        counts["apogee_visits"] = int((obs_tab["survey"] == "apogee").sum())
        counts["clusters"] = _write_cluster_lists(out, params["clusters"])
    manifest = {
        "preset": preset,
        "seed": int(seed),
        "n_stars": n_stars,
        "package": "cannonade",
        "package_version": ver,
        "parameters": dict({k: params[k] for k in _FRACTIONS}, chunk_size=int(chunk_size)),
        "realism": dict(realism.as_dict(), galah_error_factors=params["error_factors"]),
        "counts": counts,
        "files": _file_summary(out, lamost),
        "conventions": {
            "galactocentric": _FRAME,
            "wavelengths": "LAMOST and APOGEE vacuum, GALAH air (as the real products)",
            "truth": "truth/stars.fits (one row per star), truth/observations.fits (one row per spectrum file)",
        },
    }
    if not lamost:
        manifest["parameters"].update({k: params[k] for k in _AG_FRACTIONS},
                                      clusters=[c.name for c in params["clusters"]],
                                      cluster_common_fraction=CLUSTER_COMMON_FRACTION,
                                      apogee_galah_stages=list(APOGEE_GALAH_STAGES),
                                      apogee_only_giant_weight=APOGEE_ONLY_GIANT_WEIGHT)
        manifest["survey_systematics"] = params["systematics"].as_dict()
        manifest["conventions"]["ids"] = ("APOGEE_ID = '2M' + GALAH star_id (2MASS designation, as DR16 / DR3); "
                                          "truth apogee_id for every star")
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _apogee_galah_parameters(common, apogee_only, repeat, missing_alpha, systematics, clusters, realism):
    """Validated apogee-galah parameters (dict), ConfigError on a bad value."""
    out = dict(common_fraction=common, apogee_only_fraction=apogee_only, galah_repeat_fraction=repeat,
               galah_missing_alpha_fraction=missing_alpha)
    for name, v in out.items():
        if not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {v}")
        out[name] = float(v)
    if out["common_fraction"] + out["apogee_only_fraction"] > 1.0 + 1e-12:
        raise ConfigError(f"common_fraction + apogee_only_fraction must be <= 1, got {common} + {apogee_only}")
    if clusters is None:
        clusters = NAMED_CLUSTERS
    by_name = {c.name: c for c in NAMED_CLUSTERS}
    chosen = []
    for c in clusters:
        if isinstance(c, NamedCluster):
            chosen.append(c)
        elif str(c) in by_name:
            chosen.append(by_name[str(c)])
        else:
            raise ConfigError(f"unknown cluster {c!r}; named clusters: {sorted(by_name)} (or pass NamedCluster objects)")
    if len({c.name for c in chosen}) != len(chosen):
        raise ConfigError(f"clusters: duplicated names {[c.name for c in chosen]}")
    out["clusters"] = tuple(chosen)
    out["systematics"] = as_systematics(systematics, realism.enabled)
    return out


def select_surveys(rng, giant, member, n_common, n_apogee_only):
    """Survey membership of a chunk's stars: (m,) int, 0 common, 1 APOGEE-only, 2 GALAH-only.

    Named-cluster members (``member``) first: :data:`CLUSTER_COMMON_FRACTION` of them (at most ``n_common``)
    are common, the other giants APOGEE-only and dwarfs GALAH-only. The field stars then fill the counts:
    common ones uniformly, APOGEE-only ones from the rest with weight :data:`APOGEE_ONLY_GIANT_WEIGHT` for
    giants, the remainder GALAH-only. Exact counts unless the members alone exceed them.
    """
    m = len(giant)
    kind = np.full(m, 2, int)
    mem = np.flatnonzero(member)
    k_mc = min(int(round(CLUSTER_COMMON_FRACTION * len(mem))), n_common)
    common_m = rng.choice(mem, size=k_mc, replace=False) if k_mc else np.zeros(0, int)
    kind[mem] = np.where(giant[mem], 1, 2)
    kind[common_m] = 0
    field = np.flatnonzero(~member)
    n_cf = int(np.clip(n_common - k_mc, 0, len(field)))
    common_f = rng.choice(field, size=n_cf, replace=False) if n_cf else np.zeros(0, int)
    kind[common_f] = 0
    rest = np.setdiff1d(field, common_f)
    n_af = int(np.clip(n_apogee_only - int((kind[mem] == 1).sum()), 0, len(rest)))
    if n_af:
        w = np.where(giant[rest], APOGEE_ONLY_GIANT_WEIGHT, 1.0)
        kind[rng.choice(rest, size=n_af, replace=False, p=w / w.sum())] = 1
    return kind


def _simulate_apogee_galah_chunk(out, seed, ci, c0, m, params, writers, state, counts):
    """Simulate apogee-galah chunk ``ci`` (stars c0 .. c0 + m - 1): field stars and named-cluster members,
    their survey membership, the cross-survey systematics, the GALAH and APOGEE files, Gaia and the truth.

    Random streams per chunk: 0 field population, 9 named-cluster members, 1 survey membership, 2 GALAH,
    4 APOGEE, 5 Gaia, 6 GALAH error jitter, 8 APOGEE per-visit effects, 10 cross-survey systematics,
    11 GALAH repeat exposures and missing α. Updates ``state`` and ``counts`` in place.
    """
    from astropy.table import vstack

    clusters = params["clusters"]
    n_cl = min(m - 1, int(round(params["cluster_fraction"] * m))) if clusters else 0
    per = np.full(len(clusters), n_cl // max(len(clusters), 1), int)
    per[: n_cl - int(per.sum())] += 1
    field = simulate_population(m - n_cl, rng=_chunk_rng(seed, ci, 0), id_offset=c0, cluster_fraction=0.0,
                                binary_fraction=params["binary_fraction"], stage_probs=APOGEE_GALAH_STAGES,
                                xfe_scatter_scale=INTRINSIC_XFE_SCATTER_SCALE)
    field["cluster_name"] = np.full(len(field), "", dtype="U12")
    if n_cl:
        stars = vstack([field, named_cluster_members(per, _chunk_rng(seed, ci, 9), c0 + m - n_cl, clusters)],
                       join_type="exact")
    else:
        stars = field
    s_all = stellar_arrays(stars)
    giant = np.asarray(stars["logg"]) < 3.5
    member = np.arange(m) >= m - n_cl
    kind = select_surveys(_chunk_rng(seed, ci, 1), giant, member, int(round(params["common_fraction"] * m)),
                           int(round(params["apogee_only_fraction"] * m)))
    in_apogee, in_galah = kind <= 1, kind != 1
    apo_sys, gal_sys = cross_survey_systematics(stars["teff"], stars["logg"], params["systematics"], _chunk_rng(seed, ci, 10))
    realism = params["realism"]
    ig = np.flatnonzero(in_galah)
    before = state["galah"]
    state["galah"], corruption, ref_truth = write_galah_chunk(
        out, stars, s_all, ig, _chunk_rng(seed, ci, 2), state["galah"], writers, params["corrupt_fraction"], realism,
        params["error_factors"], _chunk_rng(seed, ci, 6), cross={k: v[ig] for k, v in gal_sys.items()},
        repeat_fraction=params["galah_repeat_fraction"], missing_alpha_fraction=params["galah_missing_alpha_fraction"],
        extra_rng=_chunk_rng(seed, ci, 11))
    ia = np.flatnonzero(in_apogee)
    write_apogee_chunk(out, stars, s_all, _chunk_rng(seed, ci, 4), writers, realism, _chunk_rng(seed, ci, 8), idx=ia,
                       systematics={k: v[ia] for k, v in apo_sys.items()})
    gaia = cat.gaia_catalogue(stars, _chunk_rng(seed, ci, 5))
    gaia["source_id"] = 4_000_000_000_000_000_000 + np.asarray(stars["star_id"]) * 7919
    gaia["ra"], gaia["dec"] = np.asarray(stars["ra"]), np.asarray(stars["dec"])
    writers["gaia"].append(gaia)
    # truth
    tr = {c: np.asarray(stars[c]) for c, _, _ in truth_columns(True) if c in stars.colnames}
    tr["is_reference"] = in_galah
    tr["in_apogee"], tr["in_galah"] = in_apogee, in_galah
    tr["apogee_id"] = np.array(["2M" + t for t in cat.twomass_id(stars["ra"], stars["dec"])])
    ck = np.zeros(m, int)
    ck[ig] = corruption
    tr["labels_corrupted"] = ck > 0
    tr["corruption"] = np.array(cat.CORRUPTION_KINDS)[ck]
    exposures = np.zeros(m, int)
    for c in [f"ref_sys_{x}" for x in SYSTEMATIC_LABELS] + [f"ref_err_{x}" for x in REFERENCE_ERROR_LABELS]:
        tr[c] = np.full(m, np.nan)
        if len(ig):
            tr[c][ig] = ref_truth[c]
    for lab in CROSS_LABELS:
        tr[f"apogee_sys_{lab}"] = np.where(in_apogee, apo_sys[lab], np.nan)
        tr[f"galah_sys_{lab}"] = np.full(m, np.nan)
        if len(ig):
            tr[f"galah_sys_{lab}"][ig] = ref_truth[f"galah_sys_{lab}"]
    if len(ig):
        exposures[ig] = ref_truth["galah_exposures"]
    tr["galah_exposures"] = exposures
    writers["truth"].append(tr)
    counts["stars"] += m
    counts["reference_stars"] += len(ig)
    counts["corrupted"] += int((ck > 0).sum())
    counts["galah_spectra"] += 4 * (state["galah"] - before)
    counts["galah_repeat_stars"] += int((exposures > 1).sum())
    counts["apogee_spectra"] += len(ia)
    counts["common"] += int((kind == 0).sum())
    counts["apogee_only"] += int((kind == 1).sum())
    counts["galah_only"] += int((kind == 2).sum())
    counts["cluster_members"] += n_cl
    counts["binaries"] += len(np.unique(stars["binary_id"][stars["binary_id"] >= 0]))


def _write_cluster_lists(out, clusters):
    """``OUT/clusters/members.txt`` (the format of the real ``clusters_physical_logg.txt``: APOGEE_ID, true
    log g, cluster name; every member, whichever survey observed it) and ``OUT/clusters/clusters.csv``
    (name, kind, true fe_h and alpha_fe, member counts, centre). Returns the number of clusters with members."""
    from astropy.table import Table

    t = Table.read(out / "truth" / "stars.fits", hdu=1)
    name = np.char.strip(np.asarray(t["cluster_name"]).astype(str))
    ids = np.char.strip(np.asarray(t["apogee_id"]).astype(str))
    mem = np.flatnonzero(name != "")
    (out / "clusters").mkdir(parents=True, exist_ok=True)
    lines = [f"{ids[i]} {float(t['logg'][i]):7.3f} {name[i]}" for i in mem]
    with atomic_path(out / "clusters" / "members.txt") as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    rows = ["name,kind,fe_h,alpha_fe,n_members,n_apogee,n_galah,n_common,ra,dec,distance_kpc"]
    n_with = 0
    for c in clusters:
        sel = name == c.name
        n_with += int(sel.any())
        na, ng = int((sel & t["in_apogee"]).sum()), int((sel & t["in_galah"]).sum())
        nc = int((sel & t["in_apogee"] & t["in_galah"]).sum())
        rows.append(f"{c.name},{c.kind},{c.fe_h:.2f},{c.alpha_fe:.2f},{int(sel.sum())},{na},{ng},{nc},{c.ra:.4f},"
                    f"{c.dec:.4f},{c.distance:g}")
    with atomic_path(out / "clusters" / "clusters.csv") as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    return n_with


def _check_arguments(preset, n_stars, fractions):
    """Validated ``n_stars`` (int); ConfigError for an unknown preset, n_stars < 1 or a fraction outside [0, 1]."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    n_stars = int(n_stars)
    if n_stars < 1:
        raise ConfigError(f"n_stars must be >= 1, got {n_stars}")
    for name in _FRACTIONS:
        v = fractions[name]
        if not 0.0 <= float(v) <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {v}")
    return n_stars


def _open_writers(out, preset, seed, version, lamost):
    """The catalogue writers of a preset (dict name -> FitsTableWriter) and the spectra folders."""
    prov = [card("ORIGIN", ORIGIN), card("PRESET", preset), card("SEED", int(seed)), card("VERSION", version)]
    writers = {
        "truth": FitsTableWriter(out / "truth" / "stars.fits", truth_columns(not lamost), "STARS", prov),
        "obs": FitsTableWriter(out / "truth" / "observations.fits", OBS_COLUMNS, "OBSERVATIONS", prov),
        "galah": FitsTableWriter(out / "galah" / "catalogue.fits", galah_columns(extended=not lamost), "GALAH_DR3", prov),
        "gaia": FitsTableWriter(out / "gaia" / "catalogue.fits", GAIA_COLUMNS, "GAIA", prov),
    }
    if lamost:
        writers["lamost"] = FitsTableWriter(out / "lamost" / "catalogue.fits", LAMOST_COLUMNS, "LAMOST_DR", prov)
    else:
        writers["apogee"] = FitsTableWriter(out / "apogee" / "allStar.fits", apogee_columns(), "ALLSTAR", prov)
        writers["galah_allspec"] = FitsTableWriter(out / "galah" / "allspec.fits", galah_columns(allspec=True),
                                                   "GALAH_DR3_ALLSPEC", prov)
    for d in (["lamost/spectra"] if lamost else ["apogee/spectra"]) + ["galah/spectra"]:
        make_dirs(out / d, "mock survey directory")
    return writers


class _RowCollector:
    """Stands in for a :class:`~cannonade.simulate.writers.FitsTableWriter` in a worker: keeps the row blocks."""

    def __init__(self):
        self.blocks = []

    def append(self, rows):
        self.blocks.append(rows)


def _apogee_galah_task(ci, out, seed, c0, m, chunk_size, params):
    """One apogee-galah chunk (in a worker process or in this one): writes its spectrum files and returns
    its catalogue rows (dict writer name -> list of row blocks) and counts."""
    writers = {k: _RowCollector() for k in ("truth", "obs", "galah", "galah_allspec", "apogee", "gaia")}
    counts = dict(stars=0, reference_stars=0, corrupted=0, galah_spectra=0, galah_repeat_stars=0, apogee_spectra=0,
                  common=0, apogee_only=0, galah_only=0, cluster_members=0, binaries=0)
    # GALAH observation numbers (sobject_ids) of chunk ci start at ci * 2 * chunk_size: at most 2 exposures a star
    state = {"galah": 2 * int(chunk_size) * int(ci)}
    _simulate_apogee_galah_chunk(out, seed, ci, c0, m, params, writers, state, counts)
    return {k: w.blocks for k, w in writers.items()}, counts


def _run_apogee_galah_chunks(out, seed, n_stars, chunk_size, params, writers, counts, bar_kw, workers):
    """Simulate every apogee-galah chunk (``workers`` processes) and append their rows in chunk order.

    ``bar_kw``: arguments of the progress bar, made once the workers are forked (a bar starts a thread)."""

    starts = list(range(0, n_stars, chunk_size))
    sizes = [min(chunk_size, n_stars - c0) for c0 in starts]
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(int(workers), len(starts)))
    tasks = ((ci, (out, seed, c0, m, chunk_size, params)) for ci, (c0, m) in enumerate(zip(starts, sizes)))
    if workers > 1:
        circular_speed(np.array([R0_KPC]))  # import galpy and build its potential once, before the workers fork
    pending, nxt = {}, 0
    with get_backend("process" if workers > 1 else "serial", workers=workers) as backend:
        bar = progress(**bar_kw)
        try:
            for ci, result in backend.imap_unordered(_apogee_galah_task, tasks):
                pending[ci] = result
                while nxt in pending:  # rows go to the catalogues in chunk order, whatever order the chunks finish in
                    blocks, chunk_counts = pending.pop(nxt)
                    for key, rows in blocks.items():
                        for block in rows:
                            writers[key].append(block)
                    for key, v in chunk_counts.items():
                        counts[key] += v
                    bar.update(sizes[nxt])
                    nxt += 1
        finally:
            bar.close()


def _simulate_lamost_galah_chunk(out, seed, ci, c0, m, params, writers, state, counts):
    """Simulate lamost-galah chunk ``ci`` (stars c0 .. c0 + m - 1), observe it, write its files and rows.

    Random streams per chunk: 0 population, 1 reference selection, 2 GALAH, 3 LAMOST, 5 Gaia,
    6 GALAH error jitter, 7 LAMOST per-visit effects (the realism streams: switching realism off changes
    no other draw). Updates ``state`` (spectra counters) and ``counts`` in place.
    """
    stars = simulate_population(m, rng=_chunk_rng(seed, ci, 0), id_offset=c0, cluster_fraction=params["cluster_fraction"],
                                binary_fraction=params["binary_fraction"], stage_probs=(0.52, 0.13, 0.23, 0.12))
    s_all = stellar_arrays(stars)
    rng_sel = _chunk_rng(seed, ci, 1)
    n_ref = int(round(params["reference_fraction"] * m))
    w = 1.0 / (1.0 + np.exp((np.asarray(stars["g_mag"]) - 13.5) / 0.6)) + 1e-4
    ref = np.sort(rng_sel.choice(m, size=n_ref, replace=False, p=w / w.sum())) if n_ref else np.zeros(0, int)
    is_ref = np.zeros(m, bool)
    is_ref[ref] = True
    realism = params["realism"]
    state["galah"], corruption, ref_truth = write_galah_chunk(
        out, stars, s_all, ref, _chunk_rng(seed, ci, 2), state["galah"], writers, params["corrupt_fraction"], realism,
        params["error_factors"], _chunk_rng(seed, ci, 6))
    before = state["lamost"]
    state["lamost"] = write_lamost_chunk(out, stars, s_all, _chunk_rng(seed, ci, 3), state["lamost"], writers,
                                         {"repeat_fraction": params["repeat_fraction"]}, realism, _chunk_rng(seed, ci, 7))
    counts["lamost_spectra"] += state["lamost"] - before
    # Gaia for everyone
    gaia = cat.gaia_catalogue(stars, _chunk_rng(seed, ci, 5))
    gaia["source_id"] = 4_000_000_000_000_000_000 + np.asarray(stars["star_id"]) * 7919
    gaia["ra"], gaia["dec"] = np.asarray(stars["ra"]), np.asarray(stars["dec"])
    writers["gaia"].append(gaia)
    # truth
    kind = np.zeros(m, int)
    kind[ref] = corruption
    tr = {c: np.asarray(stars[c]) for c, _, _ in truth_columns() if c in stars.colnames}
    tr["is_reference"] = is_ref
    tr["labels_corrupted"] = kind > 0
    tr["corruption"] = np.array(cat.CORRUPTION_KINDS)[kind]
    for c in [f"ref_sys_{x}" for x in SYSTEMATIC_LABELS] + [f"ref_err_{x}" for x in REFERENCE_ERROR_LABELS]:
        tr[c] = np.full(m, np.nan)
        if len(ref):
            tr[c][ref] = ref_truth[c]
    writers["truth"].append(tr)
    counts["stars"] += m
    counts["reference_stars"] += len(ref)
    counts["corrupted"] += int((kind > 0).sum())
    counts["galah_spectra"] += 4 * len(ref)
    counts["clusters"] += len(np.unique(stars["cluster_id"][stars["cluster_id"] >= 0]))
    counts["cluster_members"] += int((stars["cluster_id"] >= 0).sum())
    counts["binaries"] += len(np.unique(stars["binary_id"][stars["binary_id"] >= 0]))


def _read_obs(path):
    from astropy.table import Table

    t = Table.read(path, hdu=1)
    t["survey"] = np.char.strip(np.asarray(t["survey"]).astype(str))
    return t


def _file_summary(out, lamost):
    summary = {}
    dirs = (["lamost/spectra"] if lamost else ["apogee/spectra"]) + ["galah/spectra"]
    for d in dirs:
        names = sorted(p.name for p in (out / d).glob("*" + SPECTRUM_SUFFIX))
        summary[d] = {"count": len(names), "first": names[0] if names else None, "last": names[-1] if names else None}
    cats = ["truth/stars.fits", "truth/observations.fits", "galah/catalogue.fits", "gaia/catalogue.fits"]
    cats += ["lamost/catalogue.fits"] if lamost else ["apogee/allStar.fits", "galah/allspec.fits",
                                                      "clusters/members.txt", "clusters/clusters.csv"]
    summary["catalogues"] = sorted(cats)
    return summary
