"""Provenance: what made a file — software version, recipe, config, model, input store, time.

Every catalogue, model file and label table Cannonade writes carries one provenance record
(:func:`provenance`): as FITS header cards (:func:`provenance_cards`, keywords ``CND*``)
and as JSON under the key ``cannonade.provenance`` of a Parquet file's metadata or a model
file's metadata block. :func:`fingerprint` is the stable hash used for configurations and
stage inputs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from cannonade._version import __version__

__all__ = ["PROVENANCE_KEY", "fingerprint", "provenance", "provenance_cards", "utc_now"]

#: key of the provenance JSON in Parquet metadata and model-file metadata
PROVENANCE_KEY = "cannonade.provenance"


def _plain(obj):
    """JSON-able form of ``obj`` (paths and unknown objects as strings, numpy scalars as numbers)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return _plain(obj.tolist())
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _store_text(store):
    """A store path (or several, e.g. both surveys' stores) as text; None stays None."""
    if store is None:
        return None
    if isinstance(store, (list, tuple)):
        return [str(Path(p)) for p in store]
    return str(Path(store))


def fingerprint(obj, length=16):
    """A stable hex digest (SHA-256, first ``length`` characters) of JSON-able data.

    Dict keys are sorted, so two equal configurations give the same fingerprint whatever
    their order.
    """
    text = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def utc_now():
    """The current UTC time, ISO 8601 to the second (``2026-11-30T09:15:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(recipe=None, config_fingerprint=None, training_hash=None, input_store=None, created=None, **extra):
    """The provenance record of one output file.

    Parameters
    ----------
    recipe : str, optional
        The pipeline recipe (``"wheeler2020"``) or the command that made the file.
    config_fingerprint : str, optional
        :func:`fingerprint` of the run's configuration.
    training_hash : str or dict {model name: str}, optional
        SHA-256 of the training labels of the model(s) used.
    input_store : str, Path or list of them, optional
        The spectra store(s) the labels were inferred from.
    created : str, optional
        ISO UTC time; now by default.
    **extra
        Anything else worth keeping (JSON-able).

    Returns
    -------
    dict
        ``software``, ``version``, ``created`` and every given field (None fields left out).
    """
    rec = dict(software="cannonade", version=__version__, created=created or utc_now(), recipe=recipe,
               config_fingerprint=config_fingerprint, training_hash=training_hash,
               input_store=_store_text(input_store))
    rec.update(extra)
    return {k: _plain(v) for k, v in rec.items() if v is not None}


#: FITS keyword of each provenance field (8 characters at most)
_CARDS = (
    ("CNDVERS", "version", "cannonade version"),
    ("CNDDATE", "created", "creation time (UTC)"),
    ("CNDRECIP", "recipe", "recipe or command"),
    ("CNDCONF", "config_fingerprint", "configuration fingerprint"),
    ("CNDTRAIN", "training_hash", "training-set hash(es) of the model(s)"),
    ("CNDSTORE", "input_store", "input spectra store"),
)


def provenance_cards(prov):
    """FITS header cards ``(keyword, value, comment)`` of a provenance record.

    One card per field present; a dict value (several models' training hashes) is written
    as compact JSON. The whole record is also in ``CNDPROV`` as JSON.
    """
    cards = []
    for key, field, comment in _CARDS:
        if field in prov:
            value = prov[field]
            cards.append(_card(key, json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else value, comment))
    cards.append(_card("CNDPROV", json.dumps(prov, sort_keys=True, separators=(",", ":")), "provenance (JSON)"))
    return cards


def _card(key, value, comment):
    """A card whose comment is dropped when the value leaves no room for it (a long value
    continues over CONTINUE cards, which have none; astropy would warn and truncate). Text is
    made ASCII (``\\xeb`` for 'ë': a FITS header holds ASCII only, astropy would drop the card);
    ``CNDPROV``'s JSON keeps every value exactly."""
    if isinstance(value, str):
        value = value.encode("ascii", "backslashreplace").decode("ascii")
    return (key, value, comment if len(str(value)) + len(comment) <= 60 else "")
