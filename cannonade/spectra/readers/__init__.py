"""Survey spectrum readers: LAMOST LRS, APOGEE (apStar, aspcapStar, apVisit), GALAH.

One entry point, :func:`read_spectrum`, recognises the layout from the file's
*content* (headers, HDU shapes, extension names; never the file name) and
returns a :class:`Spectrum` whose arrays follow the package convention:

* ``wavelength`` -- vacuum Angstrom, increasing, float64;
* ``flux`` -- float64 (NaN allowed at bad pixels);
* ``ivar`` -- inverse variance, float64, exactly 0 at every bad pixel: masked by
  the survey's pixel bits, NaN/inf flux or error, -9999 sentinels, zero or
  negative errors / inverse variances.

``meta`` always holds ``survey`` ('lamost' | 'apogee' | 'galah'), ``obj_id``,
``ra``, ``dec``, ``snr``, ``redshift`` (the redshift still present in the
wavelength array, so that ``wavelength / (1 + redshift)`` is the rest frame; NaN
when unknown), ``rv`` (km/s, NaN when unknown), ``source_file``, ``layout``, plus
the primary header's own keys (upper case; float sentinels <= -9998 -> NaN).

Every failure (missing, truncated, corrupt, non-FITS, unknown layout) raises
:class:`~cannonade.exceptions.SpectrumFormatError` naming the file and why.

Modules: :mod:`~cannonade.spectra.readers.fits` (byte-level FITS parsing, safe
opening, header conventions, :class:`~cannonade.spectra.readers.fits.Loader`),
:mod:`~cannonade.spectra.readers.spectrum` (:class:`Spectrum`), and one module
per survey -- :mod:`~cannonade.spectra.readers.lamost`,
:mod:`~cannonade.spectra.readers.galah`, :mod:`~cannonade.spectra.readers.apogee`
-- each exposing an ``identify(hdul) -> layout`` + ``load(hdul, path, layout,
**kwargs)`` pair. The pairs are registered here, in order; :func:`read_spectrum`
and :func:`detect_layout` ask each in turn (like astropy's I/O registry or
specutils' loaders). :func:`register_reader` adds a survey. File formats and
choices are documented in ``docs/spectra.md``.
"""

from __future__ import annotations

from cannonade.exceptions import UnknownReaderError
from cannonade.spectra.linelists import air_to_vacuum
from cannonade.spectra.readers import apogee, galah, lamost
from cannonade.spectra.readers.apogee import read_apstar, read_apstar_visits, read_apvisit, read_aspcapstar
from cannonade.spectra.readers.fits import Loader, load_file
from cannonade.spectra.readers.galah import read_galah_ccd, read_galah_star
from cannonade.spectra.readers.lamost import read_lamost
from cannonade.spectra.readers.spectrum import Spectrum, rv_to_redshift
from cannonade.tables import suggest

__all__ = [
    "Spectrum",
    "read_spectrum",
    "read_stored_spectrum",
    "detect_layout",
    "register_reader",
    "unregister_reader",
    "registered_readers",
    "Loader",
    "read_lamost",
    "read_apstar",
    "read_apstar_visits",
    "read_aspcapstar",
    "read_apvisit",
    "read_galah_ccd",
    "read_galah_star",
    "air_to_vacuum",
    "rv_to_redshift",
]

# the registry: tried in this order (LAMOST first: its image layout is the commonest
# and has a raw-bytes fast path; the identify functions do not overlap)
_REGISTRY: list[Loader] = []


def register_reader(loader, first=False):
    """Add a survey's reader to the registry used by :func:`read_spectrum`.

    Parameters
    ----------
    loader : cannonade.spectra.readers.fits.Loader
        Its ``identify`` / ``load`` pair (and optional raw fast path). A loader with
        the same ``name`` is replaced in place.
    first : bool
        Try it before the others (default: after them).
    """
    for i, existing in enumerate(_REGISTRY):
        if existing.name == loader.name:
            _REGISTRY[i] = loader
            return
    if first:
        _REGISTRY.insert(0, loader)
    else:
        _REGISTRY.append(loader)


def unregister_reader(name):
    """Remove the loader called ``name`` from the registry.

    Raises
    ------
    UnknownReaderError
        No loader is registered as ``name`` (names it and the registered ones; also a ``KeyError``).
    """
    for i, existing in enumerate(_REGISTRY):
        if existing.name == name:
            del _REGISTRY[i]
            return
    raise UnknownReaderError(f"no spectrum reader registered as {name!r}{suggest(name, [ld.name for ld in _REGISTRY])}; "
                             f"registered: {[ld.name for ld in _REGISTRY]}")


def registered_readers():
    """The registered loaders, in the order they are tried (a tuple of ``Loader``)."""
    return tuple(_REGISTRY)


register_reader(lamost.LOADER)
register_reader(galah.LOADER)
register_reader(apogee.LOADER)


def detect_layout(hdul):
    """The layout of an opened FITS file, from its content.

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList

    Returns
    -------
    str
        One of ``'lamost_image'``, ``'lamost_table'``, ``'apstar'``, ``'aspcapstar'``,
        ``'apvisit'``, ``'galah_ccd'`` (or a registered reader's own), ``''`` when unknown.
    """
    for loader in _REGISTRY:
        layout = loader.identify(hdul)
        if layout:
            return layout
    return ""


def read_spectrum(path, **kwargs):
    """Read one survey spectrum, whatever its layout (detected from the file content).

    Parameters
    ----------
    path : str or Path
        A LAMOST (DR1-DR7 image or DR8+ table), APOGEE apStar / aspcapStar /
        apVisit, or GALAH per-CCD FITS file (or any registered reader's).
    **kwargs
        Passed to the layout's reader (e.g. ``row=`` for apStar, ``and_bits=``
        for LAMOST, ``pixmask_bits=`` for APOGEE, ``normalised=`` for GALAH).

    Returns
    -------
    Spectrum

    Raises
    ------
    SpectrumFormatError
        Missing, truncated, corrupt, non-FITS or unknown-layout file (the message
        names the file and the reason).
    """
    return _load(path, None, **kwargs)


def read_stored_spectrum(path, stored, **kwargs):
    """:func:`read_spectrum` of a file whose bytes were already read as stored.

    For a caller that reads files ahead in a thread while it decodes others (an ingest worker:
    the disk's latency hidden behind the decoding).

    Parameters
    ----------
    path : str or Path
        The file (named in errors).
    stored : bytes
        Its bytes as :func:`cannonade.spectra.readers.fits.read_stored` gives them (a
        ``.fits.gz`` still compressed).
    **kwargs
        As :func:`read_spectrum`.

    Returns
    -------
    Spectrum
    """
    return _load(path, stored, **kwargs)


def _load(path, stored, **kwargs):
    """:func:`~cannonade.spectra.readers.fits.load_file` with every registered reader (``stored``:
    the file's bytes already read, or None to read them now)."""
    known = ", ".join(loader.description or loader.name for loader in _REGISTRY)
    return load_file(path, _REGISTRY, f"unknown spectrum layout (not {known})", stored=stored, **kwargs)
