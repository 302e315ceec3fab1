"""The quality bitmask: one table names and documents every bit; FITS header cards; compose/describe."""

import warnings

import numpy as np
import pytest

from cannonade.exceptions import CannonadeError
from cannonade.flags import FLAG_TABLE, RECOMMENDED_CUT, Flag, FlagError, compose, describe, fits_header_cards, flag_names


def test_every_bit_is_distinct_named_and_documented_once():
    names = [n for n, _, _ in FLAG_TABLE]
    bits = [b for _, b, _ in FLAG_TABLE]
    assert names == [f.name for f in Flag] == flag_names()
    assert len(set(bits)) == len(bits) and bits == sorted(bits)
    for name, bit, desc in FLAG_TABLE:
        assert int(Flag[name]) == 1 << bit  # a single bit each
        assert desc and len(desc) > 10
    values = [int(f) for f in Flag]
    assert all(a & b == 0 for i, a in enumerate(values) for b in values[i + 1 :])
    # the bits the calibration and the pipeline rely on
    for name in ("NO_DATA", "NOT_CONVERGED", "SINGULAR", "LOW_SNR", "MISSING_PIXELS", "HIGH_CHI2", "OUTSIDE_TRAINING",
                 "EXTRAPOLATED", "KIEL_EXTRAP", "FAR_FROM_TRAINING", "HIGH_WINDOW_CHI2", "UNCALIBRATED"):
        assert name in names
    assert RECOMMENDED_CUT == "flags == 0"
    assert max(bits) < 63  # fits an int64 column


def test_compose_and_describe_round_trip():
    flags = compose(no_data=[True, False, False], HIGH_CHI2=np.array([False, True, True]), low_snr=[False, False, True])
    assert flags.dtype == np.int64 and flags.shape == (3,)
    assert describe(flags[0]) == ["NO_DATA"]
    assert describe(flags[1]) == ["HIGH_CHI2"]
    assert describe(flags[2]) == ["LOW_SNR", "HIGH_CHI2"]
    assert describe(0) == []
    assert describe(int(Flag.HIGH_WINDOW_CHI2) | (1 << 40)) == ["HIGH_WINDOW_CHI2", "BIT40"]
    assert compose({"far_from_training": [True, False]}, singular=True).tolist() == [
        int(Flag.FAR_FROM_TRAINING | Flag.SINGULAR), int(Flag.SINGULAR)]
    assert np.all((compose(extrapolated=np.ones(4, bool)) & int(Flag.EXTRAPOLATED)) != 0)


def test_unknown_flags_and_shape_mismatches_are_named():
    with pytest.raises(FlagError, match="'not_a_flag'") as exc:
        compose(not_a_flag=[True])
    assert isinstance(exc.value, CannonadeError)
    with pytest.raises(FlagError, match="'low_snr'.*shape"):
        compose(no_data=[True, False], low_snr=[True])
    with pytest.raises(FlagError):
        describe(-1)


def test_fits_header_cards_are_valid_and_document_every_bit():
    from astropy.io import fits

    cards = fits_header_cards()
    assert len(cards) == len(FLAG_TABLE) + 1
    header = fits.Header()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation or verification warning
        for keyword, value, comment in cards:
            assert len(keyword) <= 8 and keyword.isupper()
            card = fits.Card(keyword, value, comment)
            card.verify("exception")
            assert len(card.image) == 80 and card.comment == comment
            header.append(card)
    for name, bit, _ in FLAG_TABLE:
        assert header[f"FLAGB{bit:02d}"] == name
    assert header["FLAGCUT"] == RECOMMENDED_CUT
    assert len({k for k, _, _ in cards}) == len(cards)
    with pytest.raises(FlagError):
        fits_header_cards(prefix="TOOLONGX")


def test_the_docs_table_of_bits_is_the_flag_table():
    """docs/calibration.md lists every bit exactly as cannonade.flags defines it (never stale)."""
    from pathlib import Path

    from cannonade.flags import FLAG_TABLE

    text = (Path(__file__).resolve().parents[1] / "docs" / "calibration.md").read_text()
    for name, bit, description in FLAG_TABLE:
        assert f"| {bit} | {1 << bit} | `{name}` | {description} |" in text, name
