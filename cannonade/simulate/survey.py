"""``simulate_survey``: a mock survey written to disk in the real file layouts.

Output layout (kept stable: the pipeline depends on it)::

    OUT/manifest.json
    OUT/lamost/spectra/spec-<lmjd>-<planid>_sp<spid>-<fiberid>.fits   (lamost-galah)
    OUT/lamost/catalogue.fits
    OUT/galah/spectra/<sobject_id><ccd>.fits                           (4 CCD files per star)
    OUT/galah/catalogue.fits
    OUT/apogee/spectra/apStar-r12-<APOGEE_ID>.fits, OUT/apogee/allStar.fits   (apogee-galah)
    OUT/gaia/catalogue.fits
    OUT/truth/stars.fits, OUT/truth/observations.fits

Stars are simulated, observed and written in chunks (each with its own seeded
random stream), so memory is bounded and the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cannonade.exceptions import ConfigError
from cannonade.galaxy.dynamics import R0_KPC, V_SUN_KMS, Z_SUN_KPC
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
from cannonade.simulate.population import simulate_population
from cannonade.simulate.realism import REFERENCE_ERROR_LABELS, SYSTEMATIC_LABELS, as_realism, draw_error_factors
from cannonade.simulate.writers import FitsTableWriter, card
from cannonade.util import atomic_path, progress

__all__ = ["simulate_survey", "PRESETS"]

PRESETS = ("lamost-galah", "apogee-galah")
CHUNK = 2000  # stars per chunk (fixed: part of the seeded stream definition)
_FRAME = (f"cannonade.galaxy.dynamics.galactocentric_frame (Wheeler+2020): Sun at (x, y, z) = "
          f"(-{R0_KPC:g}, 0, {Z_SUN_KPC:g}) kpc, (U, V, W) = {tuple(V_SUN_KMS)} km/s; discs rotate with the "
          f"MWPotential2014 circular speed less an asymmetric drift")
_FRACTIONS = ("reference_fraction", "repeat_fraction", "corrupt_fraction", "cluster_fraction", "binary_fraction")


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
                    chunk_size=CHUNK, show_progress=None, realism=None):
    """Simulate a mock survey and write it in the real file layouts.

    Parameters
    ----------
    preset : {'lamost-galah', 'apogee-galah'}
        'lamost-galah': every star gets LAMOST spectra (a ``repeat_fraction`` of them
        repeat visits); a ``reference_fraction`` (brightness-weighted) are also observed
        by GALAH. 'apogee-galah': every star is a common APOGEE + GALAH star (mostly giants).
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
        Open-cluster members and wide-binary members, as fractions of all stars.
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
    out = Path(out)
    lamost = preset == "lamost-galah"
    ver = _version()
    writers = _open_writers(out, preset, seed, ver, lamost)
    counts = dict(stars=0, reference_stars=0, corrupted=0, lamost_spectra=0, repeat_visit_stars=0,
                  galah_spectra=0, apogee_spectra=0, apogee_visits=0, clusters=0, cluster_members=0, binaries=0)
    state = {"lamost": 0, "galah": 0}  # spectra written so far (define file names and ids)
    bar = progress(total=n_stars, desc=f"simulate {preset}", disable=None if show_progress is None else not show_progress)
    try:
        for ci, c0 in enumerate(range(0, n_stars, int(chunk_size))):
            m = min(int(chunk_size), n_stars - c0)
            _simulate_chunk(out, seed, ci, c0, m, lamost, params, writers, state, counts)
            bar.update(m)
        for key in list(writers):
            writers[key].close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    obs_tab = _read_obs(out / "truth" / "observations.fits")
    if lamost:
        lam = obs_tab[obs_tab["survey"] == "lamost"]
        _, per_star = np.unique(lam["star_id"], return_counts=True)
        counts["repeat_visit_stars"] = int((per_star > 1).sum())
    else:
        counts["apogee_visits"] = int((obs_tab["survey"] == "apogee").sum())
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
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


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
        "truth": FitsTableWriter(out / "truth" / "stars.fits", truth_columns(), "STARS", prov),
        "obs": FitsTableWriter(out / "truth" / "observations.fits", OBS_COLUMNS, "OBSERVATIONS", prov),
        "galah": FitsTableWriter(out / "galah" / "catalogue.fits", galah_columns(), "GALAH_DR3", prov),
        "gaia": FitsTableWriter(out / "gaia" / "catalogue.fits", GAIA_COLUMNS, "GAIA", prov),
    }
    if lamost:
        writers["lamost"] = FitsTableWriter(out / "lamost" / "catalogue.fits", LAMOST_COLUMNS, "LAMOST_DR", prov)
    else:
        writers["apogee"] = FitsTableWriter(out / "apogee" / "allStar.fits", apogee_columns(), "ALLSTAR", prov)
    for d in (["lamost/spectra"] if lamost else ["apogee/spectra"]) + ["galah/spectra"]:
        (out / d).mkdir(parents=True, exist_ok=True)
    return writers


def _simulate_chunk(out, seed, ci, c0, m, lamost, params, writers, state, counts):
    """Simulate chunk ``ci`` (stars c0 .. c0 + m - 1), observe it, write its files and rows.

    Random streams per chunk: 0 population, 1 reference selection, 2 GALAH, 3 LAMOST,
    4 APOGEE, 5 Gaia, 6 GALAH error jitter, 7 LAMOST and 8 APOGEE per-visit effects (the realism
    streams: switching realism off changes no other draw). Updates ``state`` (spectra counters)
    and ``counts`` in place.
    """
    stage_probs = (0.52, 0.13, 0.23, 0.12) if lamost else (0.25, 0.10, 0.42, 0.23)
    stars = simulate_population(m, rng=_chunk_rng(seed, ci, 0), id_offset=c0, cluster_fraction=params["cluster_fraction"],
                                binary_fraction=params["binary_fraction"], stage_probs=stage_probs)
    s_all = stellar_arrays(stars)
    rng_sel = _chunk_rng(seed, ci, 1)
    if lamost:
        n_ref = int(round(params["reference_fraction"] * m))
        w = 1.0 / (1.0 + np.exp((np.asarray(stars["g_mag"]) - 13.5) / 0.6)) + 1e-4
        ref = np.sort(rng_sel.choice(m, size=n_ref, replace=False, p=w / w.sum())) if n_ref else np.zeros(0, int)
    else:
        ref = np.arange(m)
    is_ref = np.zeros(m, bool)
    is_ref[ref] = True
    realism = params["realism"]
    state["galah"], corruption, ref_truth = write_galah_chunk(
        out, stars, s_all, ref, _chunk_rng(seed, ci, 2), state["galah"], writers, params["corrupt_fraction"], realism,
        params["error_factors"], _chunk_rng(seed, ci, 6))
    if lamost:
        before = state["lamost"]
        state["lamost"] = write_lamost_chunk(out, stars, s_all, _chunk_rng(seed, ci, 3), state["lamost"], writers,
                                             {"repeat_fraction": params["repeat_fraction"]}, realism, _chunk_rng(seed, ci, 7))
        counts["lamost_spectra"] += state["lamost"] - before
    else:
        write_apogee_chunk(out, stars, s_all, _chunk_rng(seed, ci, 4), writers, realism, _chunk_rng(seed, ci, 8))
        counts["apogee_spectra"] += m
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
        names = sorted(p.name for p in (out / d).glob("*.fits"))
        summary[d] = {"count": len(names), "first": names[0] if names else None, "last": names[-1] if names else None}
    cats = ["truth/stars.fits", "truth/observations.fits", "galah/catalogue.fits", "gaia/catalogue.fits"]
    cats += ["lamost/catalogue.fits"] if lamost else ["apogee/allStar.fits"]
    summary["catalogues"] = sorted(cats)
    return summary
