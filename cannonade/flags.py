"""The per-star quality bitmask: every bit named and documented here, and only here.

``InferenceResult.flags`` (and the catalogue's ``flags`` column) is an int64 bitmask of
:class:`Flag`. **Recommended cut: ``flags == 0``** — the star's spectrum had data and S/N,
the fit converged with a proper covariance, its χ² is usual for its S/N, its labels lie where
the model is unbiased and close to the training set, and its errors are calibrated.

The bits, their meaning and their order are :data:`FLAG_TABLE` (one table; the docs and the
FITS header cards are written from it).

Functions: :func:`compose` (bitmask from named boolean arrays), :func:`describe` (names of
the bits set in a value), :func:`fits_header_cards` (``FLAGBnn`` keyword cards documenting
the bits, plus ``FLAGCUT``). A base-layer module: NumPy, the standard library and
``cannonade.exceptions`` only.
"""

from __future__ import annotations

import enum

import numpy as np

from cannonade.exceptions import CannonadeError

__all__ = ["Flag", "FLAG_TABLE", "RECOMMENDED_CUT", "FlagError", "compose", "describe", "fits_header_cards", "flag_names"]


class FlagError(CannonadeError, ValueError):
    """An unknown flag name, or flag arrays of the wrong shape (names the flag)."""


class Flag(enum.IntFlag):
    """Bits of the per-star quality bitmask (descriptions in :data:`FLAG_TABLE`)."""

    NO_DATA = 1 << 0
    NOT_CONVERGED = 1 << 1
    SINGULAR = 1 << 2
    LOW_SNR = 1 << 3
    MISSING_PIXELS = 1 << 4
    HIGH_CHI2 = 1 << 5
    OUTSIDE_TRAINING = 1 << 6
    EXTRAPOLATED = 1 << 7
    KIEL_EXTRAP = 1 << 8
    FAR_FROM_TRAINING = 1 << 9
    HIGH_WINDOW_CHI2 = 1 << 10
    UNCALIBRATED = 1 << 11


_DESCRIPTIONS = {
    "NO_DATA": "no more valid pixels than labels: labels NaN",
    "NOT_CONVERGED": "no start converged: labels not trusted",
    "SINGULAR": "covariance singular: errors NaN",
    "LOW_SNR": "median S/N per pixel below the low-S/N limit",
    "MISSING_PIXELS": "missing-pixel fraction above the limit",
    "HIGH_CHI2": "chi2/dof above the CV 99th pct at this S/N",
    "OUTSIDE_TRAINING": "a stellar parameter outside the training min-max",
    "EXTRAPOLATED": "a stellar parameter beyond its KDE bounds",
    "KIEL_EXTRAP": "teff or logg beyond its KDE bounds",
    "FAR_FROM_TRAINING": "Nandakumar+2022 Eq.5 distance above threshold",
    "HIGH_WINDOW_CHI2": "a label's line-window chi2 high (pipeline)",
    "UNCALIBRATED": "model not calibrated: errors are formal",
}

FLAG_TABLE = tuple((f.name, int(f).bit_length() - 1, _DESCRIPTIONS[f.name]) for f in Flag)
"""(name, bit index, description) of every bit, in bit order: the one place they are documented.

Longer notes: NO_DATA — the star has no more valid pixels than labels (labels NaN).
NOT_CONVERGED — Levenberg–Marquardt stopped without converging. SINGULAR — (JᵀWJ) not
invertible: some label direction is unconstrained. LOW_SNR / MISSING_PIXELS — thresholds of
the model's calibration (defaults 20 and 0.2). HIGH_CHI2 — χ²/dof above the curve fitted to
the cross-validation's χ²/dof versus S/N. OUTSIDE_TRAINING — a stellar parameter (a label
that is not an [X/Fe] abundance) outside the training set's [min, max]. EXTRAPOLATED /
KIEL_EXTRAP — a stellar parameter (Teff or log g) beyond the bounds where the model is unbiased
in cross-validation (Wheeler+2020 §4). As in Wheeler+2020 Table 1, each abundance carries its
own flag (``r.extrapolated``, the catalogue's ``<x>_fe_extrap``): cut on it when using that
abundance. FAR_FROM_TRAINING — mean squared
distance to the 10 nearest training stars in CV-RMS units above the threshold (Nandakumar+2022
§3.6, Eq. 5). HIGH_WINDOW_CHI2 — reserved for the pipeline's per-element windowed χ².
UNCALIBRATED — the model has no calibration; errors are the formal ones and the flags that
need the calibration (HIGH_CHI2, EXTRAPOLATED, KIEL_EXTRAP, FAR_FROM_TRAINING) are never set.
"""

RECOMMENDED_CUT = "flags == 0"
_NAMES = {int(f): f.name for f in Flag}


def flag_names():
    """The bit names, in bit order."""
    return [name for name, _, _ in FLAG_TABLE]


def _flag(name):
    try:
        return Flag[str(name).upper()]
    except KeyError:
        raise FlagError(f"unknown flag {name!r}; the flags are {flag_names()}") from None


def compose(flags=None, /, **named):
    """An int64 bitmask from named boolean arrays.

    Parameters
    ----------
    flags : mapping {name: (M,) bool}, optional
    **named : (M,) bool
        Flag names, case-insensitive (``no_data=...`` or ``NO_DATA=...``); a scalar broadcasts.

    Returns
    -------
    (M,) int64
        Bit ``Flag[name]`` set where the array is True.

    Raises
    ------
    FlagError
        An unknown name, or arrays of different lengths (names the flag).
    """
    items = dict(flags or {}, **named)
    shape = None
    for name, value in items.items():
        v = np.asarray(value)
        if v.ndim:
            if shape is not None and v.shape != shape:
                raise FlagError(f"flag {name!r} has shape {v.shape}; the other flags have shape {shape}")
            shape = v.shape
    out = np.zeros(shape or (), dtype=np.int64)
    for name, value in items.items():
        bit = np.int64(int(_flag(name)))
        out |= np.where(np.asarray(value, dtype=bool), bit, np.int64(0))
    return out


def describe(value):
    """Names of the bits set in one bitmask value, in bit order (unknown bits as ``BIT<n>``).

    >>> describe(Flag.LOW_SNR | Flag.HIGH_CHI2)
    ['LOW_SNR', 'HIGH_CHI2']
    """
    value = int(value)
    if value < 0:
        raise FlagError(f"a flag bitmask is non-negative, got {value}")
    names = []
    for bit in range(value.bit_length()):
        if value >> bit & 1:
            names.append(_NAMES.get(1 << bit, f"BIT{bit}"))
    return names


def fits_header_cards(prefix="FLAGB"):
    """FITS header cards documenting the bits: ``(keyword, value, comment)``.

    One card ``<prefix><nn>`` per bit (value the bit's name, comment its description; with the
    default prefix ``FLAGB00``…``FLAGB11``, 7 characters), and ``FLAGCUT`` holding the
    recommended cut. Every card fits one 80-character header record.

    Parameters
    ----------
    prefix : str
        At most 6 characters (keywords are ≤ 8 characters).

    Returns
    -------
    list of (str, str, str)
    """
    if len(prefix) > 6 or not prefix.isalnum():
        raise FlagError(f"FITS keyword prefix {prefix!r} must be at most 6 letters or digits")
    cards = [(f"{prefix.upper()}{bit:02d}", name, _fit_comment(name, desc)) for name, bit, desc in FLAG_TABLE]
    cards.append(("FLAGCUT", RECOMMENDED_CUT, "recommended cut on the flags bitmask"))
    return cards


def _fit_comment(value, comment):
    """The comment cut so that ``KEYWORD = 'value' / comment`` fits 80 characters."""
    value_field = max(20, len(value) + 2 + max(0, 8 - len(value)))  # quoted string, padded to 8 chars
    room = 80 - 10 - value_field - 3  # "KEYWORD= " (10) + value + " / "
    return comment if len(comment) <= room else comment[: room - 1].rstrip() + "."
