"""Readers on the real sample files (../shared/data) and on synthetic/broken files."""

import math
import shutil

import numpy as np
import pytest
from astropy.io import fits

from cannonade.spectra import surveys
from cannonade.exceptions import SpectrumFormatError
from cannonade.spectra.readers import (
    Spectrum,
    air_to_vacuum,
    read_apstar,
    read_apstar_visits,
    read_apvisit,
    read_aspcapstar,
    read_galah_ccd,
    read_galah_star,
    read_lamost,
    read_spectrum,
)

from cannonade.spectra.readers.fits import check_hdus, read_bytes

STD_KEYS = ("survey", "obj_id", "ra", "dec", "snr", "redshift", "rv", "source_file")


def _lamost_files(shared_data):
    files = sorted((shared_data / "lamost_dr1" / "spectra").glob("*.fits"))
    assert len(files) == 179
    return files


def _check_std_meta(s, survey):
    for k in STD_KEYS:
        assert k in s.meta, k
    assert s.meta["survey"] == survey
    assert s.meta["obj_id"]
    if s.meta.get("OBJ_NAME") != "Vesta/Sun":
        assert math.isfinite(s.meta["ra"]) and math.isfinite(s.meta["dec"])
    assert s.wavelength.dtype == np.float64 and s.flux.dtype == np.float64 and s.ivar.dtype == np.float64
    assert np.all(np.diff(s.wavelength) > 0)
    assert np.all(s.ivar >= 0) and np.all(np.isfinite(s.ivar))


# --------------------------------------------------------------------------- LAMOST


def test_lamost_dr1_all_files(shared_data):
    counts = set()
    for f in _lamost_files(shared_data):
        s = read_spectrum(f)
        _check_std_meta(s, "lamost")
        counts.add(s.wavelength.size)
        assert 3699 < s.wavelength[0] < 3701 and 9080 < s.wavelength[-1] < 9100
        # bad pixels are exactly the masked / zero-ivar / non-finite ones
        raw = fits.getdata(f).astype(np.float64)
        bad = (raw[1] <= 0) | ~np.isfinite(raw[0]) | ((raw[3].astype(int) & surveys.LAMOST_AND_BITS_DEFAULT) != 0)
        bad |= (raw[4].astype(int) & surveys.LAMOST_OR_BITS_DEFAULT) != 0
        assert np.array_equal(s.ivar == 0, bad)
    assert counts <= {3904, 3908, 3909} and 3904 in counts


def test_lamost_meta_and_wavelength_from_coefficients(shared_data):
    f = _lamost_files(shared_data)[0]
    s = read_lamost(f)
    h = fits.getheader(f)
    # DR1 row 3 is a normalised flux, not the wavelength: wavelength comes from COEFF0/COEFF1
    np.testing.assert_allclose(s.wavelength, 10 ** (h["COEFF0"] + h["COEFF1"] * np.arange(h["NAXIS1"])), rtol=1e-12)
    assert np.nanmax(fits.getdata(f)[2]) < 10  # row 3 really is not a wavelength here
    assert s.meta["redshift"] == pytest.approx(h["Z"])
    assert s.meta["rv"] == pytest.approx(h["Z"] * surveys.C_KMS)
    assert s.meta["snr"] == pytest.approx(h["SN_G"])
    assert s.meta["obj_id"] == h["DESIG"].replace("LAMOST ", "")
    assert s.meta["SUBCLASS"] == h["SUBCLASS"]  # the file's own header keys
    assert s.meta["source_file"] == str(f)


def test_lamost_detected_from_content_not_name(shared_data, tmp_path):
    dst = tmp_path / "apStar-looks-like-apogee.txt"
    shutil.copy(_lamost_files(shared_data)[0], dst)
    s = read_spectrum(dst)
    assert s.meta["survey"] == "lamost" and s.meta["layout"] == "lamost_image"


def _write_lamost_image(path, flux, ivar, andmask, ormask, z=1e-4, vacuum=True):
    n = flux.size
    data = np.stack([flux, ivar, np.ones(n), andmask, ormask]).astype(np.float32)
    h = fits.Header()
    h["RA"], h["DEC"], h["DESIG"] = 10.0, 20.0, "LAMOST J000000.00+000000.0"
    h["COEFF0"], h["COEFF1"], h["Z"], h["SN_G"], h["VACUUM"] = 3.5682, 1e-4, z, 30.0, vacuum
    fits.PrimaryHDU(data, h).writeto(path)


def test_lamost_mask_bits_configurable_and_sentinels(tmp_path):
    n = 500
    flux = np.full(n, 100.0)
    ivar = np.full(n, 0.01)
    andmask = np.zeros(n)
    ormask = np.zeros(n)
    andmask[10] = 1  # BADCCD in every exposure
    ormask[20] = 4  # NOSKY in some exposure: not rejected by default
    ormask[30] = 32  # NODATA in some exposure: rejected by default
    flux[40] = -9999.0
    flux[41] = np.nan
    ivar[42] = -1.0
    ivar[43] = np.inf
    path = tmp_path / "x.fits"
    _write_lamost_image(path, flux, ivar, andmask, ormask)
    s = read_spectrum(path)
    bad = set(np.flatnonzero(s.ivar == 0))
    assert bad == {10, 30, 40, 41, 42, 43}
    s2 = read_spectrum(path, and_bits=0, or_bits=1 << surveys.LAMOST_MASK_BITS["NOSKY"])
    assert set(np.flatnonzero(s2.ivar == 0)) == {20, 40, 41, 42, 43}


def test_lamost_air_wavelengths_converted(tmp_path):
    n = 100
    path = tmp_path / "air.fits"
    _write_lamost_image(path, np.ones(n), np.ones(n), np.zeros(n), np.zeros(n), vacuum=False)
    s = read_spectrum(path)
    air = 10 ** (3.5682 + 1e-4 * np.arange(n))
    np.testing.assert_allclose(s.wavelength, air_to_vacuum(air))
    assert 1.0 < s.wavelength[0] - air[0] < 1.1  # ~1.05 A at 3700 A


def _write_lamost_table(path, n=300):
    rng = np.random.default_rng(3)
    wave = 10 ** (3.5682 + 1e-4 * np.arange(n))
    flux = 50 + rng.normal(0, 1, n)
    ivar = np.full(n, 1.0)
    andmask = np.zeros(n, dtype=np.int32)
    ormask = np.zeros(n, dtype=np.int32)
    andmask[5] = 2
    ormask[6] = 1
    ivar[7] = -3.0
    flux[8] = np.nan
    cols = [
        fits.Column(name=name, format=f"{n}{fmt}", array=arr[None, :])
        for name, fmt, arr in (
            ("FLUX", "E", flux),
            ("IVAR", "E", ivar),
            ("WAVELENGTH", "D", wave),
            ("ANDMASK", "J", andmask),
            ("ORMASK", "J", ormask),
        )
    ]
    h = fits.Header()
    h["TELESCOP"] = "LAMOST"
    h["OBSID"] = 123456789
    h["RA"], h["DEC"], h["Z"], h["SNRG"] = 1.5, -2.5, 3e-4, 42.0
    fits.HDUList([fits.PrimaryHDU(header=h), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(path)
    return wave, flux


def test_lamost_dr8_table_layout(tmp_path):
    path = tmp_path / "spec-dr8.fits"
    wave, flux = _write_lamost_table(path)
    s = read_spectrum(path)
    _check_std_meta(s, "lamost")
    assert s.meta["layout"] == "lamost_table"
    np.testing.assert_allclose(s.wavelength, wave)
    assert set(np.flatnonzero(s.ivar == 0)) == {5, 6, 7, 8}
    assert s.meta["obj_id"] == "123456789" and s.meta["snr"] == 42.0 and s.meta["redshift"] == pytest.approx(3e-4)
    assert read_lamost(path).meta["layout"] == "lamost_table"


def _write_table_variant(path, n=400, extname="COADD", mask_format="E", extra=True, vacuum=True, scaled=False,
                         variable=False, shuffle=False, primary_data=False, lengths=None, repeat=False):
    """A DR8+-like file with its columns in other forms: masks as floats or ints, columns before
    the spectrum's (strings, bits, a scalar), no EXTNAME, air wavelengths, a scaled or
    variable-length column, a primary image."""
    rng = np.random.default_rng(7)
    wave = 10 ** (3.5682 + 1e-4 * np.arange(n))
    if shuffle:
        wave = wave[::-1].copy()
    if repeat:
        wave[5] = wave[4]
    flux = 50 + rng.normal(0, 1, n)
    ivar = rng.uniform(0.5, 2, n)
    ivar[3] = 0
    andmask = np.zeros(n)
    andmask[10] = 4
    ormask = np.zeros(n)
    ormask[11] = 1  # BADCCD: bad
    ormask[12] = 4  # NOSKY: kept
    sizes = lengths or (n, n, n)
    cols = []
    if extra:
        cols += [fits.Column(name="OBJNAME", format="12A", array=np.array(["star"])),
                 fits.Column(name="FLAGS", format="11X", array=np.zeros((1, 11), dtype=bool)),
                 fits.Column(name="SNR", format="D", array=np.array([33.0]))]
    cols += [fits.Column(name="Wavelength", format=f"{sizes[0]}D", array=wave[None, : sizes[0]]),
             fits.Column(name="FLUX", format=f"{sizes[1]}E", array=flux[None, : sizes[1]]),
             fits.Column(name="IVAR", format=f"{sizes[2]}E", array=ivar[None, : sizes[2]]),
             fits.Column(name="ANDMASK", format=f"{n}{mask_format}", array=andmask[None, :].astype(np.float32 if mask_format == "E" else np.int32))]
    if scaled:
        cols.append(fits.Column(name="ORMASK", format=f"{n}I", bzero=32768, array=ormask[None, :].astype(np.uint16)))
    else:
        cols.append(fits.Column(name="ORMASK", format=f"{n}{mask_format}", array=ormask[None, :].astype(np.float32 if mask_format == "E" else np.int32)))
    if variable:
        cols.append(fits.Column(name="EXTRA", format="PE()", array=np.array([np.ones(3, dtype=np.float32)], dtype=object)))
    table = fits.BinTableHDU.from_columns(cols)
    if extname:
        table.header["EXTNAME"] = extname
    h = fits.Header()
    h["TELESCOP"], h["OBSID"], h["RA"], h["DEC"], h["Z"], h["SNRG"] = "LAMOST", 987, 10.0, 20.0, 1e-4, 50.0
    h["VACUUM"] = vacuum
    prim = fits.PrimaryHDU(data=np.zeros((2, 5), np.float32) if primary_data else None, header=h)
    fits.HDUList([prim, table]).writeto(path)
    return path


def test_lamost_tables_read_from_the_bytes_equal_astropys_reading(tmp_path, monkeypatch):
    """DR8+ table files (DR10's 11 million spectra) are read straight from their bytes, without
    astropy (made to fail): the same spectrum, metadata and errors as the astropy path, whatever
    the columns' forms and order; the tables the bytes path cannot read as astropy would (a
    scaled or variable-length column, a primary image) still go to astropy."""
    from cannonade.spectra.readers import lamost
    from cannonade.spectra.readers import fits as fits_module

    fast = {
        "test": _write_lamost_table(tmp_path / "a.fits") and tmp_path / "a.fits",
        "float masks": _write_table_variant(tmp_path / "b.fits"),
        "int masks, no extname": _write_table_variant(tmp_path / "c.fits", mask_format="J", extname=None),
        "air, decreasing": _write_table_variant(tmp_path / "d.fits", vacuum=False, shuffle=True, extra=False),
    }
    slow = {
        "scaled": _write_table_variant(tmp_path / "e.fits", scaled=True),
        "variable": _write_table_variant(tmp_path / "f.fits", variable=True),
        "primary image": _write_table_variant(tmp_path / "g.fits", primary_data=True),
    }
    bad = {
        "lengths": (_write_table_variant(tmp_path / "h.fits", lengths=(400, 399, 400)), "lengths differ"),
        "wavelength": (_write_table_variant(tmp_path / "i.fits", repeat=True), "table HDU 'COADD'"),
        "mask": (_write_table_variant(tmp_path / "j.fits", lengths=(399, 399, 399)), "ANDMASK column of table HDU 'COADD' has 400"),
    }
    expected, expected_error = {}, {}
    for name, path in {**fast, **slow}.items():
        with fits_module.open_fits(str(path)) as hdul:
            assert lamost.identify(hdul) == "lamost_table", name
            expected[name] = lamost.load(hdul, str(path), "lamost_table")
    for name, (path, _) in bad.items():
        with fits_module.open_fits(str(path)) as hdul, pytest.raises(SpectrumFormatError) as info:
            lamost.load(hdul, str(path), "lamost_table")
        expected_error[name] = str(info.value)
    for name, path in slow.items():
        assert lamost.identify_hdus(check_hdus(read_bytes(path), str(path))) == "", name
        assert read_spectrum(path).meta == expected[name].meta

    def no_astropy(*args, **kwargs):
        raise AssertionError("astropy opened the file")

    monkeypatch.setattr(fits_module, "open_fits", no_astropy)
    for name, path in fast.items():
        s, ref = read_spectrum(path), expected[name]
        for a, b in ((s.wavelength, ref.wavelength), (s.flux, ref.flux), (s.ivar, ref.ivar)):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), name
        assert s.meta == ref.meta, name
    assert set(np.flatnonzero(read_spectrum(fast["float masks"]).ivar == 0)) == {3, 10, 11}
    for name, (path, text) in bad.items():
        with pytest.raises(SpectrumFormatError) as info:
            read_spectrum(path)
        assert str(info.value) == expected_error[name] and text in str(info.value), name


# --------------------------------------------------------------------------- APOGEE
# --------------------------------------------------------------------------- APOGEE


def test_apstar_dr17(shared_data):
    f = shared_data / "apogee" / "apStar-dr17-2M17335483-2753043.fits"
    s = read_spectrum(f)
    _check_std_meta(s, "apogee")
    assert s.meta["layout"] == "apstar"
    assert s.wavelength.size == 8575
    assert 15100 < s.wavelength[0] < 15102 and 16998 < s.wavelength[-1] < 17001
    assert s.meta["obj_id"] == "2M17335483-2753043" and s.meta["snr"] > 100
    assert s.meta["redshift"] == 0.0 and s.meta["rv"] == pytest.approx(15.6814, abs=1e-3)
    mask = fits.getdata(f, 3)[0].astype(np.int64)
    err = fits.getdata(f, 2)[0]
    flux = fits.getdata(f, 1)[0]
    assert np.all(s.ivar[(mask & surveys.APOGEE_PIXMASK_DEFAULT) != 0] == 0)
    assert np.all(s.ivar[~np.isfinite(flux) | ~np.isfinite(err)] == 0)
    assert np.all(s.ivar[err >= surveys.APOGEE_BAD_ERROR] == 0)
    ok = (s.ivar > 0)
    np.testing.assert_allclose(s.ivar[ok], 1 / err[ok] ** 2)
    assert 0.8 < ok.mean() < 0.95
    # turning the pixel mask off un-masks flagged pixels with finite errors
    assert (read_apstar(f, pixmask_bits=0).ivar > 0).sum() > ok.sum()


def test_apstar_rows_and_visits(shared_data):
    f = shared_data / "apogee" / "apStar-dr17-2M17335483-2753043.fits"
    nvis = fits.getheader(f)["NVISITS"]
    visits = read_apstar_visits(f)
    assert len(visits) == nvis == 3
    assert all(v.meta["is_visit"] for v in visits) and [v.meta["visit"] for v in visits] == [1, 2, 3]
    assert not read_apstar(f).meta["is_visit"]
    r2 = read_apstar(f, row=2)
    np.testing.assert_array_equal(r2.flux, visits[0].flux)
    with pytest.raises(SpectrumFormatError, match="row 7"):
        read_apstar(f, row=7)


def test_apstar_dr13_single_and_starflag(shared_data):
    f = shared_data / "apogee" / "apStar_dr13" / "apStar-r6-2M03290406+3117075.fits"
    s = read_spectrum(f)
    assert s.wavelength.size == 8575 and s.meta["obj_id"] == "2M03290406+3117075"
    assert read_apstar_visits(f) == []
    # STARFLAG 131584 has bits 9 and 17 set: rejected by Nandakumar+2022's list
    assert s.meta["starflag"] == 131584 and s.meta["starflag_reject"] is True
    err = fits.getdata(f, 2)
    assert np.all(s.ivar[err >= 1e10] == 0)


def test_apstar_read_from_the_bytes_equals_astropys_reading(shared_data, monkeypatch):
    """apStar files (the APOGEE survey-scale case) are read straight from their bytes, without
    astropy (monkeypatched to fail): every row of the 5 real files, DR13 and DR17, equals the
    astropy path's spectrum, metadata included. aspcapStar and apVisit files (a table to read,
    a wavelength image) keep the astropy path, and so does an apStar whose mask has a BSCALE."""
    from cannonade.spectra.readers import apogee
    from cannonade.spectra.readers import fits as fits_module

    files = sorted((shared_data / "apogee").glob("apStar-*.fits")) + sorted((shared_data / "apogee" / "apStar_dr13").glob("*.fits"))
    assert len(files) == 5
    expected = {}
    for f in files:
        with fits_module.open_fits(str(f)) as hdul:
            n = 1 if hdul[1].data.ndim == 1 else hdul[1].data.shape[0]
            expected[f] = [apogee.load(hdul, str(f), "apstar", row=r) for r in range(n)]
    others = sorted((shared_data / "apogee" / "aspcapStar_dr13").glob("*.fits")) + sorted((shared_data / "apogee").glob("apVisit-*.fits"))
    for f in others:
        assert apogee.identify_hdus(check_hdus(read_bytes(f), str(f))) == ""

    def no_astropy(*args, **kwargs):
        raise AssertionError("astropy opened the file")

    monkeypatch.setattr(fits_module, "open_fits", no_astropy)
    for f, rows in expected.items():
        for r, ref in enumerate(rows):
            s = read_spectrum(f, row=r)
            for a, b in ((s.wavelength, ref.wavelength), (s.flux, ref.flux), (s.ivar, ref.ivar)):
                assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
            assert s.meta.keys() == ref.meta.keys()
            assert all(s.meta[k] == ref.meta[k] or (s.meta[k] != s.meta[k] and ref.meta[k] != ref.meta[k]) for k in s.meta)
    with pytest.raises(SpectrumFormatError, match="row 7"):
        read_spectrum(files[0], row=7)
    monkeypatch.undo()

    with fits.open(files[0]) as hdul:  # the mask scaled: astropy reads it as float, identify decides
        hdul[3].header["BSCALE"] = 2
        assert apogee.identify_hdus([(dict(h.header), 0, 1) for h in hdul]) == ""


def test_aspcapstar_missing_values(shared_data):
    for f in sorted((shared_data / "apogee" / "aspcapStar_dr13").glob("*.fits")):
        s = read_aspcapstar(f)
        assert read_spectrum(f).meta["layout"] == "aspcapstar"
        _check_std_meta(s, "apogee")
        assert s.wavelength.size == 8575 and s.meta["normalised"] is True
        # ASPCAP parameters of these M dwarfs are -9999: missing -> NaN, never a number
        assert math.isnan(s.meta["aspcap_teff"]) and math.isnan(s.meta["aspcap_logg"])
        assert all(not (isinstance(v, float) and v <= -9998) for v in s.meta.values())
        raw = fits.getdata(f, 1)
        assert np.all(s.ivar[raw <= 0] == 0)
        good = s.ivar > 0
        assert 0.8 < good.mean() < 0.9
        assert 0.85 < np.mean(s.flux[good]) < 1.05  # continuum-normalised


def test_apvisit(shared_data):
    f = shared_data / "apogee" / "apVisit-r13-5095-55844-128.fits"
    s = read_apvisit(f)
    assert read_spectrum(f).meta["layout"] == "apvisit"
    _check_std_meta(s, "apogee")
    assert s.wavelength.size == 3 * 4096
    assert 15140 < s.wavelength[0] < 15145 and 16950 < s.wavelength[-1] < 16960
    vrad = fits.getheader(f)["VRAD"]
    assert s.meta["redshift"] == pytest.approx(vrad / surveys.C_KMS, rel=1e-3)
    mask = fits.getdata(f, 3).ravel().astype(np.int64)
    wave = fits.getdata(f, 4).ravel()
    order = np.argsort(wave)
    assert np.all(s.ivar[((mask[order]) & surveys.APOGEE_PIXMASK_DEFAULT) != 0] == 0)


# --------------------------------------------------------------------------- GALAH


def test_galah_ccds(shared_data):
    files = sorted((shared_data / "galah" / "com").glob("*.fits"))
    assert len(files) == 24
    ranges = {1: (4700, 4910), 2: (5640, 5880), 3: (6470, 6745), 4: (7580, 7895)}
    for f in files:
        s = read_spectrum(f)
        _check_std_meta(s, "galah")
        ccd = s.meta["ccd"]
        assert ccd == int(f.stem[-1]) and s.meta["obj_id"] == f.stem[:15]
        assert s.wavelength.size == 4096
        lo, hi = ranges[ccd]
        assert lo < s.wavelength[0] < s.wavelength[-1] < hi
        h = fits.getheader(f)
        air0 = h["CRVAL1"]
        assert 1.2 < s.wavelength[0] - air0 < 2.3  # air -> vacuum
        rel = fits.getdata(f, "relative_error")
        good = s.ivar > 0
        np.testing.assert_allclose(s.ivar[good], 1 / (rel[good] * s.flux[good]) ** 2, rtol=1e-10)


def test_galah_positions(shared_data):
    s = read_galah_ccd(shared_data / "galah" / "com" / "2101150001010012.fits")
    assert s.meta["ra"] == pytest.approx(87.74803230671) and s.meta["dec"] == pytest.approx(7.98963034608)
    # the solar (Vesta) spectrum has RA = DEC = 0 everywhere: unknown, not a position
    sun = read_galah_ccd(shared_data / "galah" / "com" / "2101150022012392.fits")
    assert sun.meta["OBJ_NAME"] == "Vesta/Sun"
    assert math.isnan(sun.meta["ra"]) and math.isnan(sun.meta["dec"])


def test_galah_star_joins_four_ccds(shared_data, tmp_path):
    com = shared_data / "galah" / "com"
    s = read_galah_star("210115000101001", directory=com)
    assert s.wavelength.size == 4 * 4096 and s.meta["ccds"] == [1, 2, 3, 4]
    assert np.all(np.diff(s.wavelength) > 0)
    assert s.meta["snr"] == pytest.approx(s.meta["snr_ccd2"])
    same = read_galah_star(str(com / "2101150001010013.fits"))
    np.testing.assert_array_equal(same.flux, s.flux)
    via_glob = read_galah_star(str(com / "210115000101001?.fits"))
    np.testing.assert_array_equal(via_glob.wavelength, s.wavelength)
    for k in (1, 2, 3):
        shutil.copy(com / f"210115000101001{k}.fits", tmp_path / f"210115000101001{k}.fits")
    with pytest.raises(SpectrumFormatError, match="need all four"):
        read_galah_star("210115000101001", directory=tmp_path)
    assert read_galah_star("210115000101001", directory=tmp_path, require_all=False).meta["ccds"] == [1, 2, 3]


def test_gzipped_galah_ccds_read_like_plain_ones(shared_data, tmp_path):
    """``<sobject_id><ccd>.fits.gz`` (as the mock writes): id and CCD from the name, the star found by id."""
    import gzip

    com = shared_data / "galah" / "com"
    for k in "1234":
        (tmp_path / f"210115000101001{k}.fits.gz").write_bytes(gzip.compress((com / f"210115000101001{k}.fits").read_bytes()))
    ccd = read_spectrum(tmp_path / "2101150001010013.fits.gz")
    assert ccd.meta["sobject_id"] == "210115000101001" and ccd.meta["ccd"] == 3
    plain = read_galah_star("210115000101001", directory=com, normalised=True)
    for star in (read_galah_star("210115000101001", directory=tmp_path, normalised=True),
                 read_galah_star(str(tmp_path / "2101150001010012.fits.gz"), normalised=True)):
        assert star.meta["ccds"] == [1, 2, 3, 4] and star.meta["source_file"].endswith("4.fits.gz")
        np.testing.assert_array_equal(star.flux, plain.flux)
        np.testing.assert_array_equal(star.ivar, plain.ivar)


# --------------------------------------------------------------------------- broken files


def test_truncated_corrupt_and_non_fits_raise(shared_data, tmp_path):
    lam = _lamost_files(shared_data)[0].read_bytes()
    aps = (shared_data / "apogee" / "apStar-dr17-2M19485057+5005279.fits").read_bytes()
    cases = {
        "trunc_lamost.fits": lam[: len(lam) // 2],
        "trunc_header.fits": lam[:1000],
        "trunc_apstar.fits": aps[: len(aps) - 100000],
        "corrupt.fits": lam[:200] + bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)) + lam[5200:],
        "text.fits": b"this is not a FITS file\n" * 10,
        "empty.fits": b"",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(SpectrumFormatError) as exc:
            read_spectrum(p)
        assert str(p) in str(exc.value), name
    with pytest.raises(SpectrumFormatError, match="not found"):
        read_spectrum(tmp_path / "missing.fits")
    with pytest.raises(SpectrumFormatError, match="directory"):
        read_spectrum(tmp_path)


def test_unknown_layout_raises(tmp_path):
    p = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((10, 10), dtype=np.float32)).writeto(p)
    with pytest.raises(SpectrumFormatError, match="unknown spectrum layout"):
        read_spectrum(p)


def test_spectrum_dataclass_checks_shapes():
    s = Spectrum([1.0, 2.0], [1, 1], [1, 1], {})
    assert s.wavelength.dtype == np.float64 and s.n_pixels == 2
    with pytest.raises(SpectrumFormatError):
        Spectrum([1.0, 2.0], [1.0], [1.0, 1.0])


# --------------------------------------------------------------------------- registry


def test_registry_of_survey_loaders(tmp_path):
    from cannonade.spectra import readers
    from cannonade.spectra.readers import apogee, galah, lamost

    assert [ld.name for ld in readers.registered_readers()] == ["lamost", "galah", "apogee"]
    for mod in (lamost, galah, apogee):
        assert callable(mod.identify) and callable(mod.load) and mod.LOADER.identify is mod.identify
    path = tmp_path / "spec-dr8.fits"
    _write_lamost_table(path)
    with fits.open(path) as hdul:
        assert readers.detect_layout(hdul) == lamost.identify(hdul) == "lamost_table"
        assert galah.identify(hdul) == apogee.identify(hdul) == ""
    # read_lamost refuses another survey's file, naming it
    toy = tmp_path / "toy.fits"
    h = fits.Header()
    h["TOYSURV"] = "yes"
    fits.PrimaryHDU(np.linspace(1, 2, 50), h).writeto(toy)
    with pytest.raises(SpectrumFormatError, match=r"toy\.fits: not a LAMOST spectrum"):
        read_lamost(toy)
    with pytest.raises(SpectrumFormatError, match="unknown spectrum layout"):
        read_spectrum(toy)


def test_register_a_new_survey(tmp_path):
    from cannonade.spectra import readers
    from cannonade.spectra.readers.fits import Loader, header_of, std_meta

    def identify(hdul):
        return "toy_1d" if hdul[0].header.get("TOYSURV") else ""

    def load(hdul, path, layout, scale=1.0):
        flux = np.asarray(hdul[0].data, dtype=float) * scale
        meta = std_meta("toy", layout, path, "star1", 1.0, 2.0, 50.0, 0.0, 0.0, header_of(hdul, 0, path))
        return Spectrum(np.linspace(5000, 5100, flux.size), flux, np.ones(flux.size), meta)

    toy = tmp_path / "toy.fits"
    h = fits.Header()
    h["TOYSURV"] = "yes"
    fits.PrimaryHDU(np.linspace(1, 2, 50), h).writeto(toy)
    readers.register_reader(Loader("toy", identify, load, "a toy survey"))
    try:
        s = read_spectrum(toy, scale=2.0)
        assert s.meta["survey"] == "toy" and s.meta["TOYSURV"] == "yes" and s.flux[-1] == 4.0
        assert [ld.name for ld in readers.registered_readers()][-1] == "toy"
    finally:
        readers.unregister_reader("toy")
    assert "toy" not in [ld.name for ld in readers.registered_readers()]
    with pytest.raises(KeyError):
        readers.unregister_reader("toy")


def test_gzip_is_read_alike_with_and_without_isal(tmp_path, monkeypatch):
    """``cannonade[fast]`` decompresses .fits.gz with ISA-L; without it the standard library does.
    Both give the file's bytes, also for a file of two gzip members."""
    import builtins
    import gzip

    from cannonade.spectra.readers import fits as fits_reader

    pytest.importorskip("isal")
    payload = b"SIMPLE  =                    T" + bytes(range(256)) * 40
    path = tmp_path / "two_members.fits.gz"
    path.write_bytes(gzip.compress(payload[:5000]) + gzip.compress(payload[5000:]))
    assert fits_reader.read_bytes(path) == payload
    real_import = builtins.__import__

    def no_isal(name, *args, **kwargs):
        if name == "isal" or name.startswith("isal."):
            raise ImportError("isal hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_isal)
    assert fits_reader.read_bytes(path) == payload


def _write_galah_like(path, rng, bitpix_flux=-64, scaled=False):
    n = 500
    flux = 1000 + 10 * rng.normal(size=n)
    h = fits.Header()
    h["CRVAL1"], h["CDELT1"], h["CRPIX1"] = 5650.0, 0.046, 1.0
    h["RVCOM"], h["SNR"], h["RA_ICRS"], h["DEC_ICRS"] = 12.5, 40.0, 10.0, -20.0
    primary = fits.PrimaryHDU((flux if bitpix_flux == -64 else flux.astype(np.float32)), header=h)
    if scaled:  # integer pixels with BSCALE / BZERO, as some archives write them
        primary = fits.PrimaryHDU(np.round(flux * 10).astype(np.int32), header=h)
        primary.header["BSCALE"], primary.header["BZERO"] = 0.1, 0.0
    hdus = [primary,
            fits.ImageHDU(flux / 1000, name="normalized"),
            fits.ImageHDU(np.full(n, 0.01), name="relative_error"),
            fits.ImageHDU(np.zeros(n, np.float32), name="sky")]
    fits.HDUList(hdus).writeto(path)


def _assert_bytes_read_like_astropy(path):
    from cannonade.spectra.readers import galah

    for normalised in (False, True):
        via_astropy = read_galah_ccd(path, normalised=normalised)
        raw = read_bytes(path)
        hdus = check_hdus(raw, str(path))
        assert galah.identify_hdus(hdus) == "galah_ccd"
        from_bytes = galah.load_hdus(raw, hdus, str(path), normalised=normalised)
        for attr in ("wavelength", "flux", "ivar"):
            np.testing.assert_array_equal(getattr(from_bytes, attr), getattr(via_astropy, attr))
        assert from_bytes.meta.keys() == via_astropy.meta.keys()
        assert from_bytes.meta["rv"] == via_astropy.meta["rv"] and from_bytes.meta["ccd"] == via_astropy.meta["ccd"]


def test_real_galah_read_from_the_bytes_equals_astropy(shared_data):
    for f in sorted((shared_data / "galah" / "com").glob("*.fits"))[:8]:
        _assert_bytes_read_like_astropy(f)


def test_galah_read_from_the_bytes_equals_astropy(tmp_path):
    """The raw-bytes GALAH loader (no astropy, most of the cost) gives astropy's spectrum exactly."""
    from cannonade.spectra.readers import galah

    rng = np.random.default_rng(0)
    for k, kw in enumerate(({}, {"bitpix_flux": -32}, {"scaled": True})):
        f = tmp_path / f"14010100010100{k}2.fits"
        _write_galah_like(f, rng, **kw)
        _assert_bytes_read_like_astropy(f)
    # without a relative_error extension it is not a GALAH file, from the bytes or from astropy
    bad = tmp_path / "140101000101001x.fits"
    fits.HDUList([fits.PrimaryHDU(np.ones(10)), fits.ImageHDU(np.ones(10), name="normalized")]).writeto(bad)
    assert galah.identify_hdus(check_hdus(read_bytes(bad), str(bad))) == ""
    with pytest.raises(SpectrumFormatError, match="unknown"):
        read_spectrum(bad)


def _card_bytes(cards):
    """FITS header bytes: the 80-column cards, END, padded with blanks to whole 2880-byte blocks."""
    text = "".join(c.ljust(80)[:80] for c in cards) + "END".ljust(80)
    return (text + " " * (-len(text) % 2880)).encode("ascii")


def test_header_cards_parse_as_astropy_reads_them():
    """The bytes parser (ingest's header path) gives astropy's value for every kind of card:
    strings (quotes, escaped quotes, a '/' inside, trailing blanks), integers, floats with E or D
    exponents, logicals, undefined values, comments; the first of a repeated key; COMMENT/HISTORY
    skipped; cards after END ignored; a header spanning several blocks."""
    from cannonade.spectra.readers.fits import parse_header_bytes

    cards = [
        "SIMPLE  =                    T / conforms to FITS",
        "BITPIX  =                  -32",
        "NAXIS   =                    2",
        "NAXIS1  =                 3909 / pixels",
        "LOGIC   =                    F",
        "DESIG   = 'LAMOST J000000.00+000000.0' / designation",
        "QUOTED  = 'O''HARA  '",
        "SLASH   = 'a/b / c'            / a slash inside the string",
        "EMPTYSTR= ''",
        "COEFF0  =               3.5682 / log10 of the first wavelength",
        "COEFF1  =               1.0E-4",
        "EXPD    =              1.5D+03",
        "NEGINT  =                -9999",
        "NEGFLT  =              -9999.0",
        "PLUSINT =                   +7",
        "UNDEF   =                      / undefined value",
        "COMMENT   this is a comment = 5",
        "HISTORY   and history",
        "NAXIS1  =                    1 / a repeat: the first is kept",
    ] + [f"FILL{k:04d}= {k * 0.5:20.3f}" for k in range(40)]  # past one 2880-byte block
    raw = _card_bytes(cards) + _card_bytes(["AFTER   =                    1"])
    h, end = parse_header_bytes(raw, 0, "x.fits")
    assert end == 2 * 2880  # 60 cards + END: two blocks
    ref = fits.Header.fromstring(raw[:end].decode("ascii"))
    expected = {}
    for card in ref.cards:
        if card.keyword in ("COMMENT", "HISTORY", "") or card.keyword in expected:
            continue
        v = card.value
        expected[card.keyword] = None if type(v).__name__ == "Undefined" else v
    assert h == expected
    for key, value in expected.items():
        assert type(h[key]) is type(value), key
    assert h["QUOTED"] == "O'HARA" and h["SLASH"] == "a/b / c" and h["NAXIS1"] == 3909 and h["EXPD"] == 1500.0
    assert "AFTER" not in h and "COMMENT" not in h
    # the parsed cards are cached (a survey's files share most of them): a second parse, all hits,
    # and one with the cache emptied every few cards give the same header
    from cannonade.spectra.readers import fits as fits_module

    assert parse_header_bytes(raw, 0, "x.fits") == (h, end)
    saved = fits_module._MAX_CARDS
    try:
        fits_module._MAX_CARDS = 5
        fits_module._CARDS.clear()
        assert parse_header_bytes(raw, 0, "x.fits") == (h, end) and len(fits_module._CARDS) <= 5
    finally:
        fits_module._MAX_CARDS = saved
    with pytest.raises(SpectrumFormatError, match="truncated FITS header"):
        parse_header_bytes(raw[: 2 * 2880 - 80][:2880], 0, "x.fits")


def test_both_header_paths_turn_the_same_sentinels_into_nan():
    """astropy's path (``header_dict``) and ingest's bytes path (``parse_header_bytes`` then
    ``clean_header``) share one rule: floats <= -9998, NaN and ±inf, and the integer -9999, are
    missing (NaN); every other value, -9997.5, the integer -9998 and logicals included, is kept."""
    from cannonade.spectra.readers.fits import clean_header, header_dict, parse_header_bytes, sentinel_to_nan

    cards = [
        "SIMPLE  =                    T",
        "NEGINT  =                -9999",
        "NEGFLT  =              -9999.0",
        "EDGE    =              -9998.0",
        "NEAR    =              -9997.5",
        "INT9998 =                -9998",
        "POSINF  =                1E999",
        "Z       =               0.0123",
        "NAME    = '-9999   '",
    ]
    raw = _card_bytes(cards)
    fast = clean_header(parse_header_bytes(raw, 0, "x.fits")[0])
    slow = header_dict(fits.Header.fromstring(raw.decode("ascii")))
    for h in (fast, slow):
        assert all(math.isnan(h[k]) for k in ("NEGINT", "NEGFLT", "EDGE")), h
        assert h["NEAR"] == -9997.5 and h["INT9998"] == -9998 and h["Z"] == 0.0123
        assert h["SIMPLE"] is True and h["NAME"] == "-9999"
        assert math.isnan(h["POSINF"])  # 1E999 overflows to inf
    assert math.isnan(sentinel_to_nan(-math.inf)) and math.isnan(sentinel_to_nan(math.nan))
    assert sentinel_to_nan(True) is True and sentinel_to_nan(-9999.0 + 1.5) == -9997.5


def test_files_are_read_ahead_in_a_thread_in_order(tmp_path, monkeypatch):
    """read_ahead gives every file's stored bytes in order, batch after batch, read by another
    thread; a file that cannot be read gives its error in its place and the others still come."""
    import threading

    from cannonade.spectra.readers import fits as fits_module

    files = []
    for k in range(7):
        p = tmp_path / f"f{k}.fits"
        p.write_bytes(bytes([k]) * (100 + k))
        files.append(str(p))
    files[3] = str(tmp_path / "missing.fits")
    files[5] = str(tmp_path)  # a directory
    readers = set()
    real = fits_module.read_stored

    def spy(path):
        readers.add(threading.get_ident())
        return real(path)

    monkeypatch.setattr(fits_module, "read_stored", spy)
    got = list(fits_module.read_ahead(files, batch=3))
    assert [p for p, _ in got] == files
    for k, (path, stored) in enumerate(got):
        if k in (3, 5):
            assert isinstance(stored, SpectrumFormatError) and path in str(stored)
        else:
            assert stored == bytes([k]) * (100 + k)
    assert readers and threading.get_ident() not in readers
    assert list(fits_module.read_ahead([], batch=3)) == []
