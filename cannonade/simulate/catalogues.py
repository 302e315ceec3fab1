"""Survey "pipeline" labels with realistic systematics, identifiers, and the Gaia catalogue.

Each survey's labels = truth + survey systematics (offsets and Teff trends) +
noise scaling with S/N:

* GALAH (DR3-like): nearly unbiased, except [Fe/H] underestimated for metal-rich
  giants (Buder et al. 2021 §6.5, quoted by Nandakumar+2022 §3.2); vmic from its
  empirical relation. With :class:`~cannonade.simulate.realism.Realism` on, dwarf
  abundances drift with Teff and the reported errors are imperfect (the noise is
  drawn from the true errors, :func:`galah_errors`). In the apogee-galah preset the
  metal-rich giant bias is replaced by the GALAH side of the cross-survey systematics
  (``galah_labels(cross=...)``).
* APOGEE (DR16-like, apogee-galah preset): truth + the APOGEE side of the APOGEE − GALAH
  systematics of :mod:`cannonade.simulate.systematics` (Nandakumar+2022 Table 1 / Fig. 2) + noise;
  ASPCAPFLAG / STARFLAG bits on a small fraction, the flagged labels badly wrong.
* LAMOST LASP: Teff, logg, [Fe/H] with LASP-like offsets and large noise.

A small recorded fraction of GALAH reference stars get *badly wrong* labels
(another star's labels, or Teff/[Fe/H]/[X/Fe] shifted by many sigma) while
their spectra stay true, so a windowed-chi² training-set cleaning
(Wheeler+2020 §2.1) has something to find.
"""

from __future__ import annotations

import numpy as np

from cannonade.simulate.formation import default_vmic
from cannonade.simulate.lines import ABUNDANCE_ELEMENTS
from cannonade.simulate.realism import as_realism, draw_error_factors, dwarf_teff_systematics, reported_errors

__all__ = [
    "twomass_id",
    "lamost_designation",
    "galah_labels",
    "galah_errors",
    "APOGEE_GALAH_ERROR_SCALE",
    "lamost_labels",
    "apogee_labels",
    "galah_systematics",
    "flag_missing_alpha",
    "gaia_catalogue",
    "corrupt_labels",
    "APOGEE_ELEMENTS",
    "ASPCAPFLAG_BITS",
    "STARFLAG_BITS",
]

APOGEE_ELEMENTS = ["O", "Na", "Mg", "Al", "Si", "Ca", "Ti", "Mn"]
CORRUPTION_KINDS = ("none", "swap", "teff", "fe_h", "x_fe")
_ALPHA_FOUR = ("Mg", "Si", "Ca", "Ti")  # GALAH's alpha_fe: their mean
_APOGEE_ALPHA = ("O", "Mg", "Si", "Ca", "Ti")  # APOGEE [X/Fe] that share the [α/Fe] systematic

#: APOGEE DR16 ASPCAPFLAG bits (Nandakumar+2022 §3.2 cuts on them) -> (name, fraction of stars set, label damage).
#: A star with a bit set has that label badly wrong (uniform in the range, random sign); STAR_BAD (23) is
#: also set whenever TEFF_BAD or LOGG_BAD is, and on its own damages Teff, log g and [Fe/H] moderately.
ASPCAPFLAG_BITS = {
    16: ("TEFF_BAD", 0.010, {"TEFF": (300.0, 700.0)}),
    17: ("LOGG_BAD", 0.010, {"LOGG": (0.4, 1.0)}),
    18: ("VMICRO_BAD", 0.015, {"VMICRO": (0.5, 1.5)}),
    19: ("M_H_BAD", 0.010, {"FE_H": (0.25, 0.6)}),
    20: ("ALPHA_M_BAD", 0.010, {"ALPHA_FE": (0.15, 0.35)}),
    23: ("STAR_BAD", 0.010, {"TEFF": (200.0, 500.0), "LOGG": (0.3, 0.8), "FE_H": (0.15, 0.4)}),
}
#: APOGEE STARFLAG bits set at random (fraction of stars; flags only, the spectra are not affected). Bit 4
#: (LOW_SNR) is set for combined S/N < :data:`LOW_SNR` and bit 17 (SUSPECT_BROAD_LINES) for a true
#: vbroad > :data:`BROAD_LINES_KMS`, each besides these random rates.
STARFLAG_BITS = {0: ("BAD_PIXELS", 0.02), 3: ("VERY_BRIGHT_NEIGHBOR", 0.01), 4: ("LOW_SNR", 0.0),
                 9: ("PERSIST_HIGH", 0.01), 10: ("PERSIST_MED", 0.01), 11: ("PERSIST_LOW", 0.02),
                 12: ("PERSIST_JUMP_POS", 0.005), 13: ("PERSIST_JUMP_NEG", 0.005), 17: ("SUSPECT_BROAD_LINES", 0.005)}
LOW_SNR = 20.0
BROAD_LINES_KMS = 25.0


def _sexagesimal(ra, dec, ra_dec=(2, 1)):
    ra = np.mod(np.asarray(ra, float), 360.0) / 15.0
    dec = np.asarray(dec, float)
    rs = np.round(ra * 3600.0 * 10**ra_dec[0]).astype(np.int64)
    rs = np.minimum(rs, 24 * 3600 * 10**ra_dec[0] - 1)
    ds = np.round(np.abs(dec) * 3600.0 * 10**ra_dec[1]).astype(np.int64)
    return rs, ds, np.where(dec < 0, "-", "+")


def twomass_id(ra, dec):
    """2MASS-style identifiers ``hhmmssss±ddmmsss`` (RA to 0.01 s, Dec to 0.1″), (n,) str."""
    rs, ds, sg = _sexagesimal(ra, dec)
    h, m, s = rs // 360000, (rs // 6000) % 60, rs % 6000
    dd, dm, dsec = ds // 36000, (ds // 600) % 60, ds % 600
    return np.array([f"{a:02d}{b:02d}{c:04d}{g}{x:02d}{y:02d}{z:03d}" for a, b, c, g, x, y, z in zip(h, m, s, sg, dd, dm, dsec)])


def lamost_designation(ra, dec):
    """LAMOST designations ``Jhhmmss.ss±ddmmss.s``, (n,) str."""
    rs, ds, sg = _sexagesimal(ra, dec)
    h, m, s = rs // 360000, (rs // 6000) % 60, rs % 6000
    dd, dm, dsec = ds // 36000, (ds // 600) % 60, ds % 600
    return np.array([f"J{a:02d}{b:02d}{c // 100:02d}.{c % 100:02d}{g}{x:02d}{y:02d}{z // 10:02d}.{z % 10:d}"
                     for a, b, c, g, x, y, z in zip(h, m, s, sg, dd, dm, dsec)])


def _giant(logg):
    return np.asarray(logg) < 3.5


def corrupt_labels(labels, fraction, rng):
    """Make a fraction of label rows badly wrong, in place.

    Parameters
    ----------
    labels : dict of (n,) arrays
        GALAH-style labels (teff, logg, fe_h, vmic, vbroad, <x>_fe).
    fraction : float
    rng : Generator

    Returns
    -------
    kind : (n,) int
        Index into ``CORRUPTION_KINDS`` (0 = untouched): 1 labels of another star,
        2 Teff shifted ±400-800 K, 3 [Fe/H] shifted ±0.4-0.8 dex, 4 one to three
        [X/Fe] shifted ±0.5-0.9 dex.
    """
    n = len(labels["teff"])
    kind = np.zeros(n, int)
    k = int(round(fraction * n))
    if fraction > 0 and n >= 10:
        k = max(k, 1)
    if k == 0:
        return kind
    idx = np.sort(rng.choice(n, size=k, replace=False))
    kind[idx] = rng.integers(1, 5, k)
    sign = rng.choice([-1.0, 1.0], k)
    cols = ["teff", "logg", "fe_h", "vmic", "vbroad"] + [f"{x.lower()}_fe" for x in ABUNDANCE_ELEMENTS]
    orig = {c: np.array(labels[c], float) for c in cols}
    for j, i in enumerate(idx):
        if kind[i] == 1:
            # a star with genuinely different labels (not a near twin)
            far = np.flatnonzero((np.abs(orig["teff"] - orig["teff"][i]) > 500) | (np.abs(orig["fe_h"] - orig["fe_h"][i]) > 0.4))
            if far.size == 0:
                kind[i] = 2
            else:
                src = far[rng.integers(far.size)]
                for c in cols:
                    labels[c][i] = orig[c][src]
                continue
        if kind[i] == 2:
            labels["teff"][i] = orig["teff"][i] + sign[j] * rng.uniform(400, 800)
        elif kind[i] == 3:
            labels["fe_h"][i] = orig["fe_h"][i] + sign[j] * rng.uniform(0.4, 0.8)
        elif kind[i] == 4:
            for x in rng.choice(ABUNDANCE_ELEMENTS, size=rng.integers(1, 4), replace=False):
                c = f"{x.lower()}_fe"
                labels[c][i] = orig[c][i] + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 0.9)
    return kind


#: GALAH label errors of the apogee-galah preset relative to :func:`galah_errors` (the lamost-galah
#: preset's): chosen so that the mock's APOGEE − GALAH scatter of the training stars (σ of
#: Nandakumar+2022 Table 1: Teff 84 K, [α/Fe] 0.05 dex, with the systematics' own scatter and APOGEE's
#: noise) is the paper's; with the full errors it was 1.4–1.7× larger (docs/simulate.md).
APOGEE_GALAH_ERROR_SCALE = 0.5


def galah_errors(snr_c2, scale=1.0):
    """True 1-sigma errors of the GALAH labels at green-CCD S/N ``snr_c2``.

    ``scale`` multiplies every error (the apogee-galah preset: :data:`APOGEE_GALAH_ERROR_SCALE`).

    Returns dict of (n,) float: teff, logg, fe_h, vbroad and <x>_fe (x in ABUNDANCE_ELEMENTS).
    """
    snr = np.clip(np.asarray(snr_c2, float), 3.0, None)
    e = {
        "teff": 60.0 + 2500.0 / snr,
        "logg": 0.10 + 6.0 / snr,
        "fe_h": 0.05 + 2.5 / snr,
        "vbroad": 1.0 + 30.0 / snr,
    }
    for x in ABUNDANCE_ELEMENTS:
        e[f"{x.lower()}_fe"] = (1.6 if x in ("Eu", "Y", "Ba", "Na", "Al") else 1.0) * (0.05 + 3.0 / snr)
    if scale != 1.0:
        e = {k: v * float(scale) for k, v in e.items()}
    return e


def galah_labels(stars, snr_c2, rng, corrupt_fraction=0.0, realism=False, error_factors=None, jitter_rng=None,
                 cross=None):
    """GALAH DR3-like labels for reference stars.

    Parameters
    ----------
    stars : Table (n rows of truth)
    snr_c2 : (n,) float
        S/N of the green CCD (the label noise scales with it, :func:`galah_errors`).
    rng : Generator
    corrupt_fraction : float
    realism : Realism or bool
        With realism on, [Fe/H] and [X/Fe] of dwarfs get the Teff systematics of
        :func:`~cannonade.simulate.realism.dwarf_teff_systematics`, and the reported errors are
        :func:`~cannonade.simulate.realism.reported_errors` (the noise stays drawn from the true
        errors). Default False: unbiased labels with exact errors.
    error_factors : dict label -> float, optional
        Per-label reported/true error factors (:func:`~cannonade.simulate.realism.draw_error_factors`;
        drawn from ``jitter_rng`` when None).
    jitter_rng : Generator, optional
        Stream of the realism draws (default: seeded from ``rng``). ``rng``'s own draws do not
        depend on ``realism`` when it is given.
    cross : dict label -> (n,) float, optional
        The GALAH side of the APOGEE − GALAH systematics (:func:`cannonade.simulate.systematics.cross_survey_systematics`;
        apogee-galah preset): added to teff, logg, fe_h, vmic, vbroad and to the four α elements
        (so to alpha_fe), replacing the built-in metal-rich giant [Fe/H] bias; adds the columns
        ``e_alpha_fe``, ``e_vmic``, ``e_vbroad``, ``flag_alpha_fe`` (0 here; see
        :func:`flag_missing_alpha`). None (lamost-galah): the labels of earlier versions, draw for draw.

    Returns
    -------
    cols : dict of (n,) arrays with GALAH DR3 column names
    corruption : (n,) int (see :func:`corrupt_labels`)
    """
    n = len(stars)
    realism = as_realism(realism)
    snr = np.clip(np.asarray(snr_c2, float), 3.0, None)
    teff_t = np.asarray(stars["teff"], float)
    logg_t = np.asarray(stars["logg"], float)
    feh_t = np.asarray(stars["fe_h"], float)
    giant = _giant(logg_t)
    e = galah_errors(snr, scale=1.0 if cross is None else APOGEE_GALAH_ERROR_SCALE)
    syst = dwarf_teff_systematics(teff_t, logg_t, realism)
    out = {}
    if cross is None:
        out["teff"] = teff_t + rng.normal(0, 1, n) * e["teff"]
        out["logg"] = logg_t + rng.normal(0, 1, n) * e["logg"]
        # DR3 caveat: [Fe/H] underestimated for metal-rich giants
        out["fe_h"] = feh_t - 0.12 * np.clip(feh_t, 0, None) * giant + syst["fe_h"] + rng.normal(0, 1, n) * e["fe_h"]
        out["vmic"] = default_vmic(out["teff"], out["logg"]) + rng.normal(0, 0.05, n)
        out["vbroad"] = np.clip(np.asarray(stars["vbroad"], float) + rng.normal(0, 1, n) * e["vbroad"], 1.0, None)
        for x in ABUNDANCE_ELEMENTS:
            c = f"{x.lower()}_fe"
            out[c] = np.asarray(stars[c], float) + syst[c] + rng.normal(0, 1, n) * e[c]
    else:
        cr = {k: np.asarray(v, float) for k, v in cross.items()}
        out["teff"] = teff_t + cr["teff"] + rng.normal(0, 1, n) * e["teff"]
        out["logg"] = logg_t + cr["logg"] + rng.normal(0, 1, n) * e["logg"]
        out["fe_h"] = feh_t + cr["fe_h"] + syst["fe_h"] + rng.normal(0, 1, n) * e["fe_h"]
        # the empirical vmic relation at the reported Teff, log g (GALAH DR3 does not fit vmic)
        out["vmic"] = default_vmic(out["teff"], out["logg"]) + cr["vmic"] + rng.normal(0, 0.05, n)
        out["vbroad"] = np.clip(np.asarray(stars["vbroad"], float) + cr["vbroad"] + rng.normal(0, 1, n) * e["vbroad"],
                                1.0, None)
        for x in ABUNDANCE_ELEMENTS:
            c = f"{x.lower()}_fe"
            alpha_sys = cr["alpha_fe"] if x in _ALPHA_FOUR else 0.0
            out[c] = np.asarray(stars[c], float) + alpha_sys + syst[c] + rng.normal(0, 1, n) * e[c]
    corruption = corrupt_labels(out, corrupt_fraction, rng)
    if realism.enabled:
        if jitter_rng is None:
            jitter_rng = np.random.default_rng(int(rng.integers(2**63)))
        if error_factors is None:
            error_factors = draw_error_factors(realism, jitter_rng)
        e = dict(e, **reported_errors(e, error_factors, realism, jitter_rng))
    cols = {}
    for k in ("teff", "logg", "fe_h"):
        cols[k] = out[k]
        cols[f"e_{k}"] = e[k]
    cols["vmic"] = out["vmic"]
    cols["vbroad"] = out["vbroad"]
    teff_o = out["teff"]
    for x in ABUNDANCE_ELEMENTS:
        c = x.lower()
        cols[f"{c}_fe"] = out[f"{c}_fe"]
        cols[f"e_{c}_fe"] = e[f"{c}_fe"]
        # flag_x_fe: 1 = upper limit / weak line; a few random pipeline problems
        weak = (snr < 15) | ((x in ("Eu", "O")) & (teff_o > 6300)) | ((x == "Eu") & (snr < 30))
        cols[f"flag_{c}_fe"] = np.where(weak | (rng.random(n) < 0.03), 1, 0).astype(np.int32)
    cols["alpha_fe"] = 0.25 * (out["mg_fe"] + out["si_fe"] + out["ca_fe"] + out["ti_fe"])
    cols["chi2_sp"] = np.exp(rng.normal(np.log(1.3), 0.35, n))
    cols["flag_sp"] = np.where(rng.random(n) < 0.02, 1, 0).astype(np.int32)
    if cross is not None:
        # the error of a mean of four abundances, the vmic relation's scatter, the vbroad noise
        cols["e_alpha_fe"] = 0.5 * np.sqrt(np.mean([np.asarray(e[f"{x.lower()}_fe"]) ** 2 for x in _ALPHA_FOUR], axis=0))
        cols["e_vmic"] = np.full(n, 0.05)
        cols["e_vbroad"] = np.asarray(e["vbroad"], float)
        cols["flag_alpha_fe"] = np.zeros(n, np.int32)
    return cols, corruption


def flag_missing_alpha(cols, snr_c2, fraction, rng):
    """GALAH [α/Fe] not measured for a fraction of stars, in place: ``alpha_fe`` and ``e_alpha_fe`` NaN,
    ``flag_alpha_fe`` = 1 (the incomplete reference labels a training set must cope with).

    Exactly ``round(fraction * n)`` stars, drawn without replacement with weight 1 (S/N_c2 >= 20) or
    4 (S/N_c2 < 20): weak lines make the missing values more common at low S/N (not at random).

    Returns
    -------
    (n,) bool : the stars whose alpha_fe is missing.
    """
    n = len(cols["alpha_fe"])
    k = int(round(float(fraction) * n))
    miss = np.zeros(n, bool)
    if k == 0:
        return miss
    w = np.where(np.asarray(snr_c2, float) < 20.0, 4.0, 1.0)
    miss[rng.choice(n, size=k, replace=False, p=w / w.sum())] = True
    cols["alpha_fe"] = np.where(miss, np.nan, cols["alpha_fe"])
    cols["e_alpha_fe"] = np.where(miss, np.nan, cols["e_alpha_fe"])
    cols["flag_alpha_fe"] = np.where(miss, 1, cols["flag_alpha_fe"]).astype(np.int32)
    return miss


def galah_systematics(stars, cross, realism):
    """The total GALAH systematic (reported − true, without noise or corruption) per label of
    :data:`~cannonade.simulate.systematics.CROSS_LABELS`: the cross-survey part ``cross``, plus the dwarf
    Teff trends of [Fe/H] and the four α elements (:class:`~cannonade.simulate.realism.Realism`), plus, for
    vmic, the offset of the GALAH vmic relation from the true vmic. dict label -> (n,) float.
    """
    teff_t = np.asarray(stars["teff"], float)
    logg_t = np.asarray(stars["logg"], float)
    syst = dwarf_teff_systematics(teff_t, logg_t, as_realism(realism))
    out = {k: np.asarray(v, float).copy() for k, v in cross.items()}
    out["fe_h"] = out["fe_h"] + syst["fe_h"]
    out["alpha_fe"] = out["alpha_fe"] + 0.25 * sum(syst[f"{x.lower()}_fe"] for x in _ALPHA_FOUR)
    out["vmic"] = out["vmic"] + default_vmic(teff_t, logg_t) - np.asarray(stars["vmic"], float)
    return out


def lamost_labels(stars, snrg, rng):
    """LASP-like Teff, logg, [Fe/H] with errors (−9999 where LASP gives none, S/N_g < 6).

    Returns dict of (n,) arrays: teff, teff_err, logg, logg_err, feh, feh_err.
    """
    n = len(stars)
    snr = np.clip(np.asarray(snrg, float), 1.0, None)
    t = np.asarray(stars["teff"], float)
    g = np.asarray(stars["logg"], float)
    f = np.asarray(stars["fe_h"], float)
    te = 60.0 + 3000.0 / snr
    ge = 0.12 + 8.0 / snr
    fe = 0.07 + 3.0 / snr
    out = {
        "teff": t + 40.0 + 0.03 * (t - 5000.0) + rng.normal(0, 1, n) * te,
        "logg": g + np.where(_giant(g), 0.12, -0.05) + rng.normal(0, 1, n) * ge,
        "feh": f + 0.05 - 0.1 * np.clip(-1.0 - f, 0, None) + rng.normal(0, 1, n) * fe,
        "teff_err": te, "logg_err": ge, "feh_err": fe,
    }
    none = snr < 6.0
    for k in out:
        out[k] = np.where(none, -9999.0, out[k])
    return out


def apogee_labels(stars, snr, rng, systematics=None):
    """APOGEE DR16 allStar-like labels (upper-case columns) with the APOGEE side of the survey systematics.

    Parameters
    ----------
    stars : Table of truth
    snr : (n,) float
        Combined S/N (the noise scales with it).
    rng : Generator
    systematics : dict label -> (n,) float, optional
        APOGEE offsets (reported − true) of :data:`~cannonade.simulate.systematics.CROSS_LABELS`
        (:func:`~cannonade.simulate.systematics.cross_survey_systematics`); None: unbiased.

    Returns
    -------
    dict of (n,) arrays: TEFF, LOGG, FE_H, M_H, ALPHA_M, ALPHA_FE (= ALPHA_M + M_H − FE_H exactly),
    VMICRO, VMACRO (giants, by the reported LOGG < 3.5; NaN for dwarfs), VSINI (dwarfs; NaN for giants),
    VBROAD (whichever of the two is set), <X>_FE, their ``_ERR`` columns, ASPCAPFLAG and STARFLAG
    (:data:`ASPCAPFLAG_BITS`, :data:`STARFLAG_BITS`; stars with an ASPCAPFLAG bit have that label badly wrong).
    """
    n = len(stars)
    t = np.asarray(stars["teff"], float)
    g = np.asarray(stars["logg"], float)
    f = np.asarray(stars["fe_h"], float)
    sy = {k: np.zeros(n) for k in ("teff", "logg", "fe_h", "alpha_fe", "vmic", "vbroad")}
    if systematics is not None:
        sy.update({k: np.asarray(v, float) for k, v in systematics.items()})
    s = np.clip(np.asarray(snr, float), 5.0, None)
    err = {"TEFF": 50.0 + 1500.0 / s, "LOGG": 0.07 + 3.0 / s, "FE_H": 0.03 + 2.0 / s, "M_H": 0.03 + 2.0 / s,
           "ALPHA_M": 0.02 + 1.5 / s, "ALPHA_FE": 0.02 + 1.5 / s, "VMICRO": 0.05 + 3.0 / s, "VBROAD": 0.5 + 30.0 / s}
    out = {}
    out["TEFF"] = t + sy["teff"] + rng.normal(0, 1, n) * err["TEFF"]
    out["LOGG"] = g + sy["logg"] + rng.normal(0, 1, n) * err["LOGG"]
    out["FE_H"] = f + sy["fe_h"] + rng.normal(0, 1, n) * err["FE_H"]
    out["M_H"] = out["FE_H"] + rng.normal(0, 0.02, n)
    out["ALPHA_FE"] = np.asarray(stars["alpha_fe"], float) + sy["alpha_fe"] + rng.normal(0, 1, n) * err["ALPHA_FE"]
    out["VMICRO"] = np.asarray(stars["vmic"], float) + sy["vmic"] + rng.normal(0, 1, n) * err["VMICRO"]
    vb = np.asarray(stars["vbroad"], float) + sy["vbroad"] + rng.normal(0, 1, n) * err["VBROAD"]
    for x in APOGEE_ELEMENTS:
        ex = 0.03 + 2.0 / s
        shift = sy["alpha_fe"] if x in _APOGEE_ALPHA else 0.0
        out[f"{x.upper()}_FE"] = np.asarray(stars[f"{x.lower()}_fe"], float) + shift + rng.normal(0, 1, n) * ex
        out[f"{x.upper()}_FE_ERR"] = ex
    # flags, and the damage behind them
    aspcap = np.zeros(n, np.int64)
    for bit, (_, rate, damage) in ASPCAPFLAG_BITS.items():
        hit = rng.random(n) < rate
        aspcap |= np.where(hit, np.int64(1) << bit, 0)
        for col, (lo, hi) in damage.items():
            delta = rng.choice([-1.0, 1.0], n) * rng.uniform(lo, hi, n)
            out[col] = np.where(hit, out[col] + delta, out[col])
            if col == "FE_H":
                out["M_H"] = np.where(hit, out["M_H"] + delta, out["M_H"])
    aspcap |= np.where((aspcap & ((1 << 16) | (1 << 17))) != 0, np.int64(1) << 23, 0)
    starflag = np.zeros(n, np.int64)
    for bit, (_, rate) in STARFLAG_BITS.items():
        starflag |= np.where(rng.random(n) < rate, np.int64(1) << bit, 0)
    starflag |= np.where(s < LOW_SNR, np.int64(1) << 4, 0)
    starflag |= np.where(np.asarray(stars["vbroad"], float) > BROAD_LINES_KMS, np.int64(1) << 17, 0)
    out["ASPCAPFLAG"] = aspcap
    out["STARFLAG"] = starflag
    out["VMICRO"] = np.clip(out["VMICRO"], 0.3, None)
    out["ALPHA_M"] = out["ALPHA_FE"] + out["FE_H"] - out["M_H"]
    vb = np.clip(vb, 0.5, None)
    giant = _giant(out["LOGG"])  # ASPCAP's own giant/dwarf grids: vmacro relation vs fitted vsini
    out["VMACRO"] = np.where(giant, vb, np.nan)
    out["VSINI"] = np.where(giant, np.nan, vb)
    out["VBROAD"] = vb
    for k, v in err.items():
        out[f"{k}_ERR"] = v
    return out


def gaia_catalogue(stars, rng):
    """Gaia-like astrometry: parallax, proper motions, RVS velocities, G, EDSD distances.

    Returns dict of (n,) arrays with Gaia column names; r_est, r_lo, r_hi in pc
    (mode and ±1σ of the exponentially-decreasing-space-density posterior with
    L = 1.35 kpc, Bailer-Jones 2015).
    """
    n = len(stars)
    G = np.asarray(stars["g_mag"], float)
    d = np.asarray(stars["distance"], float)
    sig_plx = 0.02 + 0.5 * 10.0 ** (0.4 * (G - 20.0))
    plx = 1.0 / d + rng.normal(0, 1, n) * sig_plx
    sig_pm = 1.1 * sig_plx
    out = {
        "parallax": plx, "parallax_error": sig_plx,
        "pmra": np.asarray(stars["pmra"]) + rng.normal(0, 1, n) * sig_pm, "pmra_error": sig_pm,
        "pmdec": np.asarray(stars["pmdec"]) + rng.normal(0, 1, n) * sig_pm, "pmdec_error": sig_pm,
        "phot_g_mean_mag": G + rng.normal(0, 0.003, n),
    }
    has_rv = G < 13.5
    sig_rv = 0.4 + 2.5 * 10.0 ** (0.4 * (G - 13.5))
    out["radial_velocity"] = np.where(has_rv, np.asarray(stars["rv"]) + rng.normal(0, 1, n) * sig_rv, np.nan)
    out["radial_velocity_error"] = np.where(has_rv, sig_rv, np.nan)
    r, r_lo, r_hi = edsd_distance(plx, sig_plx)
    out["r_est"], out["r_lo"], out["r_hi"] = r * 1000.0, r_lo * 1000.0, r_hi * 1000.0
    return out


def edsd_distance(plx, sig, length=1.35):
    """Mode and ±1σ (Laplace) of the EDSD-prior distance posterior (kpc; parallaxes in mas).

    The mode solves r³/L − 2r² + (ϖ/σ²) r − 1/σ² = 0 (Bailer-Jones 2015, Eq. 19).
    """
    plx = np.asarray(plx, float)
    s2 = np.asarray(sig, float) ** 2
    n = len(plx)
    comp = np.zeros((n, 3, 3))
    # monic cubic r³ + a r² + b r + c with a = -2L, b = L ϖ/σ², c = -L/σ²
    a, b, c = -2.0 * length, length * plx / s2, -length / s2
    comp[:, 0, :] = np.stack([-np.full(n, a), -b, -c], axis=1)
    comp[:, 1, 0] = 1.0
    comp[:, 2, 1] = 1.0
    roots = np.linalg.eigvals(comp)
    real = np.abs(roots.imag) < 1e-8 * np.maximum(np.abs(roots.real), 1.0)
    rr = np.where(real & (roots.real > 0), roots.real, np.nan)

    def logp(r):
        return 2 * np.log(r) - r / length - (plx[:, None] - 1.0 / r) ** 2 / (2 * s2[:, None])

    with np.errstate(invalid="ignore"):
        lp = np.where(np.isfinite(rr), logp(np.where(np.isfinite(rr), rr, 1.0)), -np.inf)
    r = rr[np.arange(n), np.argmax(lp, axis=1)]
    r = np.where(np.isfinite(r), r, 2.0 * length)
    # curvature of log p at the mode
    d2 = -2.0 / r**2 + (-(3.0 / r**4) + 2.0 * plx / r**3) / s2
    sr = 1.0 / np.sqrt(np.maximum(-d2, 1e-12))
    return r, np.maximum(r - sr, 0.5 * r), r + sr
