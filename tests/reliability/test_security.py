"""Hostile inputs (issue 16): nothing unpickles or evaluates, cuts go through the restricted parser,
no configured name writes outside the run directory, and crafted model, store and catalogue
files are refused with a named error before anything they declare is allocated."""

import ast
import json
import os
import re
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from cannonade import (
    CannonModel,
    CatalogueError,
    ConfigError,
    ModelFileError,
    StoreFormatError,
)
from cannonade.catalogue import read_catalogue
from cannonade.catalogue.writers import write_catalogue
from cannonade.config import config_from_dict, evaluate_cut
from cannonade.spectra.store import SpectraStore, write_store

PKG = Path(__file__).resolve().parents[2] / "cannonade"
MiB = 1 << 20


# ---------------------------------------------------------------------------------------------
# (a) no pickle, no eval, in any module


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__", "execfile"}
UNSAFE_ATTRIBUTES = {"read_pickle", "unsafe_load", "full_load", "load_pickle", "system", "popen"}


def _nodes(pkg):
    for path in sorted(Path(pkg).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            yield path.relative_to(Path(pkg).parent), node


def _keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_code(pkg):
    """'file:line what' of every import of a pickling module, eval/exec/compile/__import__ call,
    np.load without allow_pickle=False, yaml.load without a SafeLoader, shell=True, os.system."""
    bad = []
    for where, node in _nodes(pkg):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            bad += [f"{line} imports {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            bad.append(f"{line} imports from {node.module}")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in UNSAFE_CALLS:
                bad.append(f"{line} calls {f.id}()")
            elif isinstance(f, ast.Attribute) and f.attr in UNSAFE_ATTRIBUTES:
                bad.append(f"{line} calls .{f.attr}()")
            elif isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name):
                if f.value.id in ("np", "numpy"):  # every np.load passes allow_pickle=False
                    value = _keyword(node, "allow_pickle")
                    if not (isinstance(value, ast.Constant) and value.value is False):
                        bad.append(f"{line} calls np.load without allow_pickle=False")
                elif f.value.id == "yaml":
                    loader = _keyword(node, "Loader")
                    if not (loader is not None and "Safe" in ast.unparse(loader)):
                        bad.append(f"{line} calls yaml.load without a SafeLoader")
            elif isinstance(f, ast.Attribute) and f.attr in ("run", "Popen", "call", "check_call", "check_output"):
                shell = _keyword(node, "shell")
                if isinstance(shell, ast.Constant) and shell.value:
                    bad.append(f"{line} runs a shell")
    return bad


def test_no_module_unpickles_or_evaluates():
    bad = unsafe_code(PKG)
    assert not bad, "\n".join(bad)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scan above is not vacuous: it flags each pattern in a planted module, and only those."""
    planted = tmp_path / "cannonade"
    planted.mkdir()
    (planted / "bad.py").write_text(
        "import pickle\nimport numpy as np\nimport yaml\n"
        "eval('1')\nnp.load('x.npy')\nnp.load('x.npz', allow_pickle=True)\nyaml.load(s)\nsubprocess.run(c, shell=True)\n"
        "np.load('y.npz', allow_pickle=False)\nyaml.load(s, Loader=yaml.SafeLoader)\nre.compile('x')\n")
    found = unsafe_code(planted)
    assert len(found) == 6, found
    for what in ("imports pickle", "calls eval()", "np.load without allow_pickle=False", "yaml.load without a SafeLoader",
                 "runs a shell"):
        assert any(what in f for f in found), what


# ---------------------------------------------------------------------------------------------
# (b) cut expressions: only the restricted subset (tests/config has the basics)


@pytest.mark.parametrize("expr, says", [
    ("snr.__class__ == 1", "uses Attribute"),
    ("(1).__class__.__bases__", "uses Attribute"),
    ("snr['__class__'] > 1", "uses Subscript"),
    ("__import__('os').system('true')", "calls an unknown function"),
    ("abs(snr)(1)", "calls an unknown function"),
    ("abs(*snr) > 1", "uses Starred"),
    ("import os", "cannot parse"),
    ("__builtins__ == 1", "double-underscore names are refused"),
    ("snr__x > 1", "double-underscore names are refused"),
    ("(lambda: 1)() == 1", "calls an unknown function"),
    ("[s for s in snr] == 1", "uses ListComp"),
    ("{s for s in snr} == 1", "uses SetComp"),
    ("{s: s for s in snr} == 1", "uses DictComp"),
    ("sum(s for s in snr) > 1", "calls an unknown function"),
    ("(x := snr) > 1", "uses NamedExpr"),
    ("f'{snr}' == 1", "uses JoinedStr"),
    ("snr if snr else 1", "uses IfExp"),
    ("snr > 'a'", "only numbers are allowed"),
    ("snr == ...", "only numbers are allowed"),
    ("snr @ snr", "uses MatMult"),
    ("snr\x00 > 1", "cannot parse"),
    ("not " * 3000 + "snr", "longer than the 1000 allowed"),
    ("not " * 200 + "snr", "nested deeper than 100"),
    ("9 ** 9 ** 9 ** 9 > snr", "cannot evaluate"),
])
def test_cut_parser_refuses_everything_but_its_subset(expr, says):
    with pytest.raises(ConfigError, match="cuts.target") as info:
        evaluate_cut(expr, Table(dict(snr=[1.0, 2.0])), what="cuts.target")
    assert says in str(info.value)


MINIMAL = {"target": {"spectra": "s", "catalogue": "c.fits"}, "reference": {"catalogue": "r.fits"}}


def test_a_config_cut_is_parsed_never_evaluated(tmp_path):
    flag = tmp_path / "pwned"
    with pytest.raises(ConfigError, match=r"cuts\.target.*calls an unknown function"):
        config_from_dict({**MINIMAL, "cuts": {"target": [f"__import__('os').mkdir('{flag}')"]}}, tmp_path)
    assert not flag.exists()


# ---------------------------------------------------------------------------------------------
# (c) configured names never lead a write outside the run directory


@pytest.mark.parametrize("name", ["../../evil", "/etc/evil", "a/b", "..", ".hidden", "-rf", "x" * 33, "dwarf\x00", ""])
def test_model_names_that_would_escape_the_run_directory_are_refused(tmp_path, name):
    cfg = {**MINIMAL, "split": {"method": "none"}, "models": {name: {"labels": ["teff"]}}}
    with pytest.raises(ConfigError, match=r"\[models\..*\]: this name becomes file names in the run directory"):
        config_from_dict(cfg, tmp_path)


@pytest.mark.parametrize("key", ["target", "reference"])
def test_survey_names_that_would_escape_the_run_directory_are_refused(tmp_path, key):
    """recipe nandakumar2022 writes catalogue/combined_<survey>_scale.fits"""
    cfg = {**MINIMAL, key: {**MINIMAL[key], "survey": "../../../tmp/x"}}
    with pytest.raises(ConfigError, match=rf"{key}\.survey = '\.\./\.\./\.\./tmp/x': this name becomes file names"):
        config_from_dict(cfg, tmp_path)


def test_ordinary_names_are_accepted(tmp_path):
    cfg = config_from_dict({**MINIMAL, "split": {"method": "none"}, "models": {"MS-dwarfs_2": {"labels": ["teff"]}}}, tmp_path)
    assert list(cfg.models) == ["MS-dwarfs_2"]


# ---------------------------------------------------------------------------------------------
# (d) crafted files


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(60, 2))
    flux = 1 + 0.1 * labels[:, :1] - 0.05 * labels[:, 1:] ** 2 + 0.01 * rng.normal(size=(60, 30))
    model = CannonModel(["teff", "logg"], order=2).fit(labels, flux, np.full(flux.shape, 1e4))
    return model.save(tmp_path_factory.mktemp("model") / "model.npz")


def _arrays(path):
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def _npy_bytes(shape, dtype, data=b""):
    """A .npy member whose header claims ``shape`` of ``dtype``, followed by ``data``."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def _rewrite(src, dst, replace):
    """``src``'s zip with the members of ``replace`` (name -> bytes) swapped in."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
    return dst


def _load_measured(path):
    tracemalloc.start()
    try:
        CannonModel.load(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_model_array_header_claiming_a_huge_shape_is_refused_before_allocating(model_file, tmp_path):
    """theta's header claims 2**27 x 10 floats (10 GiB) over a few bytes: refused, nothing allocated."""
    bad = _rewrite(model_file, tmp_path / "huge.npz", {"theta.npy": _npy_bytes((1 << 27, 10), "<f8", b"\0" * 80)})
    with pytest.raises(ModelFileError, match=r"huge\.npz: array 'theta' claims shape \(134217728, 10\)") as info:
        tracemalloc.start()
        try:
            CannonModel.load(bad)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert peak < 50 * MiB, peak
    assert "holds 80 bytes" in str(info.value)


def test_model_member_claiming_to_inflate_beyond_deflate_is_refused(model_file, tmp_path):
    """A zip directory entry whose uncompressed size no deflate stream reaches (a zip-bomb header)."""
    raw = bytearray(Path(model_file).read_bytes())
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        n = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + n] == b"theta.npy":
            break
        at = raw.find(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", raw, at + 24, 4_000_000_000)  # the central directory's uncompressed size
    bad = tmp_path / "bomb.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"bomb\.npz: array 'theta' claims to inflate from \d+ to 4000000000 bytes"):
        CannonModel.load(bad)


@pytest.mark.parametrize("name, value, says", [
    ("theta", lambda a: a.astype(np.int64), r"array 'theta' has dtype int64, expected float"),
    ("pixel_ok", lambda a: a.astype(float), r"array 'pixel_ok' has dtype float64, expected bool"),
    ("exponents", lambda a: a.astype(float), r"array 'exponents' has dtype float64, expected integer"),
    ("theta", lambda a: a[:, :, None], r"array 'theta' has shape \(30, 6, 1\), expected \(pixels, terms\)"),
    ("exponents", lambda a: a[:, :1], r"array 'exponents' has shape \(6, 1\), expected \(6, 2\)"),
    ("regularization", lambda a: a[:-1], r"array 'regularization' has shape \(29,\), expected \(30,\)"),
    ("metadata", lambda a: np.array([str(a)]), r"'metadata' is an array"),
    ("metadata", lambda a: np.array(json.dumps({**json.loads(str(a)), "label_names": "teff"})),
     r"metadata label_names is 'teff', expected a list"),
    ("metadata", lambda a: np.array(json.dumps({**json.loads(str(a)), "n_pixels": 1e12})), r"metadata n_pixels is 1000000000000.0, expected a non-negative integer"),
    ("extra", lambda a: np.zeros(3), r"array 'extra' has dtype float64, expected no such array in a model file"),
])
def test_model_arrays_of_the_wrong_dtype_or_shape_are_refused(model_file, tmp_path, name, value, says):
    arrays = _arrays(model_file)
    arrays[name] = value(arrays.get(name, np.zeros(1)))
    bad = tmp_path / "bad.npz"
    np.savez_compressed(bad, **arrays)
    with pytest.raises(ModelFileError, match=says):
        CannonModel.load(bad)


def test_a_pickled_array_in_a_model_file_is_never_unpickled(model_file, tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "pwned"),)

    arrays = _arrays(model_file)
    arrays["theta"] = np.array([Payload()], dtype=object)
    bad = tmp_path / "pickled.npz"
    np.savez(bad, **arrays)  # numpy pickles object arrays when writing
    with pytest.raises(ModelFileError, match=r"array 'theta' holds Python objects"):
        CannonModel.load(bad)
    assert not (tmp_path / "pwned").exists()


def test_the_model_checks_keep_a_good_file_loading(model_file):
    assert _load_measured(model_file) < 10 * MiB
    assert CannonModel.load(model_file).theta_.shape == (30, 6)


@pytest.fixture()
def store(tmp_path):
    wl = np.linspace(4000.0, 5000.0, 40)
    return write_store(tmp_path / "store.h5", wl, np.ones((5, 40)), np.ones((5, 40)), meta_table={"obj_id": list("abcde")})


def _edit(path, edit):
    import h5py

    with h5py.File(path, "a") as h5:
        edit(h5)
    return path


def _replace(h5, name, **kwargs):
    del h5[name]
    h5.create_dataset(name, **kwargs)


def _billion_rows(h5):
    for name in ("flux", "ivar"):
        _replace(h5, name, shape=(10**9, 40), chunks=(64, 40), dtype="f4")
    for name in list(h5["meta"]):
        ds = h5["meta"][name]
        _replace(h5, f"meta/{name}", shape=(10**9,), chunks=(4096,), dtype=ds.dtype)


@pytest.mark.parametrize("edit, says", [
    (lambda h: _replace(h, "flux", data=np.ones((5, 41), "f4")), r"'flux' is \(5, 41\) float32; expected \(n_spectra, 40\) float"),
    (lambda h: _replace(h, "ivar", data=np.ones((4, 40), "f4")), r"'ivar' is \(4, 40\) but 'flux' is \(5, 40\)"),
    (lambda h: _replace(h, "flux", data=np.ones((5, 40), "i4")), r"'flux' is \(5, 40\) int32; expected"),
    (lambda h: _replace(h, "wavelength", data=np.ones((2, 20))), r"'wavelength' is \(2, 20\) float64; expected \(n_pixels,\)"),
    (lambda h: _replace(h, "meta/ra", data=np.ones(7)), r"'meta/ra' has shape \(7,\); expected \(5,\)"),
    (lambda h: _replace(h, "meta/ra", data=np.array([b"x"] * 5)), r"'meta/ra' has dtype \|S1; expected float"),
    (lambda h: _replace(h, "meta/obj_id", data=np.arange(5)), r"'meta/obj_id' has dtype int64; expected strings"),
    # declared, never written: a billion spectra read as fill values from a file of a few kB
    (lambda h: _billion_rows(h), r"'flux' declares shape \(1000000000, 40\) \(15625000 chunks\) but the file stores 0 chunks"),
    (lambda h: _replace(h, "ivar", shape=(5, 40), chunks=(1, 40), dtype="f4"), r"'ivar' declares shape \(5, 40\) \(5 chunks\) but"),
    (lambda h: _replace(h, "wavelength", shape=(1 << 23,), dtype="f8"), r"'wavelength' is \(8388608,\) float64; expected"),
    (lambda h: h.attrs.__setitem__("version", "one"), r"store version 'one' is not a number"),
])
def test_crafted_stores_are_refused_before_their_data_is_read(store, edit, says):
    _edit(store, edit)
    tracemalloc.start()
    try:
        with pytest.raises(StoreFormatError, match=says):
            SpectraStore(store)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 20 * MiB, peak


def test_a_store_reading_another_file_through_a_link_is_refused(store, tmp_path):
    import h5py

    other = write_store(tmp_path / "other.h5", np.linspace(4000.0, 5000.0, 40), np.ones((5, 40)), np.ones((5, 40)))
    _edit(store, lambda h: (h.__delitem__("flux"), h.__setitem__("flux", h5py.ExternalLink(str(other), "/flux"))))
    with pytest.raises(StoreFormatError, match="'flux' is not a dataset of this file"):
        SpectraStore(store)


@pytest.fixture()
def catalogue(tmp_path):
    t = Table(dict(designation=["a", "b", "c"], teff=[5000.0, 5100.0, 5200.0], logg=[4.0, 4.1, 4.2], n_obs=[1, 2, 1]))
    return {fmt: write_catalogue(t, tmp_path / f"cat.{fmt}", schema="wheeler2020", label_names=["teff", "logg"])
            for fmt in ("fits", "parquet")}


def test_catalogue_column_of_the_wrong_dtype_is_refused(catalogue):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = catalogue["parquet"]
    at = pq.read_table(path)
    i = at.schema.get_field_index("teff")
    at = at.set_column(i, pa.field("teff", pa.string(), metadata=at.schema.field(i).metadata), pa.array(["hot", "hot", "cool"]))
    pq.write_table(at, path)
    with pytest.raises(CatalogueError, match=r"cat\.parquet: column 'teff' has dtype <U4, but schema 'wheeler2020' declares float64"):
        read_catalogue(path)


def _patch_card(path, key, value):
    raw = bytearray(Path(path).read_bytes())
    at = raw.find(key.ljust(8).encode() + b"= ", 2880)  # in the table's header
    card = f"{key.ljust(8)}= {value:>20}".encode()
    raw[at:at + len(card)] = card
    Path(path).write_bytes(bytes(raw))


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_catalogue_declaring_more_rows_than_it_holds_is_refused_before_reading(catalogue):
    path = catalogue["fits"]
    _patch_card(path, "NAXIS2", 10**9)
    tracemalloc.start()
    try:
        with pytest.raises(CatalogueError, match=r"cat\.fits: HDU CATALOGUE declares 1000000000 rows"):
            read_catalogue(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 50 * MiB, peak


def test_catalogue_of_a_newer_format_version_is_refused(catalogue):
    path = catalogue["fits"]
    _patch_card(path, "CNDFMTV", 99)
    with pytest.raises(CatalogueError, match=r"cat\.fits: catalogue format version 99 is not supported"):
        read_catalogue(path)


# ---------------------------------------------------------------------------------------------
# (e) hostile spectrum files: refused, naming the file and the keys, before anything they declare
# is allocated (read_spectrum; and ingest puts them in its error report)


LAMOST_KEYS = [("COEFF0", 3.5682), ("COEFF1", 0.0001), ("OBSID", 1)]  # a LAMOST DR1-DR7 image (the raw-bytes fast path)


def _card(key, value):
    return f"{key:<8}= {value!s:>20}".ljust(80)


def _fits_bytes(cards, data=b"", end=True):
    """A FITS HDU written card by card (any value, valid or not), its data padded to 2880 bytes."""
    text = "".join(_card(k, v) for k, v in cards) + ("END".ljust(80) if end else "")
    text = text.ljust(-(-len(text) // 2880) * 2880 or 2880)
    return text.encode() + data + b"\0" * (-len(data) % 2880)


def _image(n1, n2, bitpix=-32, extra=LAMOST_KEYS, end=True):
    return _fits_bytes([("SIMPLE", "T"), ("BITPIX", bitpix), ("NAXIS", 2), ("NAXIS1", n1), ("NAXIS2", n2), *extra],
                       data=b"\0" * 2880, end=end)


def _lamost_image_file(path, seed=0, n=3900):
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    flux = 100 + rng.normal(0, 1, n)
    data = np.stack([flux, np.full(n, 1.0), np.ones(n), np.zeros(n), np.zeros(n)]).astype(np.float32)
    h = fits.Header()
    h["RA"], h["DEC"], h["OBSID"], h["COEFF0"], h["COEFF1"], h["Z"], h["SN_G"] = 10.0, 20.0, 1000 + seed, 3.5682, 1e-4, 0.0, 50.0
    fits.PrimaryHDU(data, h).writeto(path)
    return path


def _patched(raw, key, value, after=2880):
    """``raw`` with the card ``key`` (the first after byte ``after``) set to ``value``."""
    raw = bytearray(raw)
    at = raw.find(key.ljust(8).encode() + b"= ", after)
    assert at > 0, key
    raw[at:at + 80] = _card(key, value).encode()
    return bytes(raw)


def _lamost_table_bytes(tmp_path):
    from astropy.io import fits

    n = 3900
    wave = np.logspace(3.5682, 3.5682 + 1e-4 * (n - 1), n)
    cols = [fits.Column(name=name, format=f"{n}E", array=arr[None, :])
            for name, arr in (("FLUX", np.ones(n)), ("IVAR", np.ones(n)), ("WAVELENGTH", wave))]
    p = tmp_path / "table_src.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(p)
    raw = p.read_bytes()
    p.unlink()
    return raw


def _compressed_bytes(tmp_path):
    from astropy.io import fits

    p = tmp_path / "comp_src.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.ones((5, 3900), dtype=np.float32))]).writeto(p)
    raw = p.read_bytes()
    p.unlink()
    return raw


def _gzip_stream(chunks, level=1):
    import zlib

    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return b"".join(c.compress(x) for x in chunks) + c.flush()


def _gzip_bomb(n_mib, members=1):
    """A .fits.gz: a FITS header, then ``n_mib`` MiB of zeros (a valid-looking start), in
    ``members`` gzip members (the last one tiny, so that its trailer's size says nothing)."""
    head = _fits_bytes([("SIMPLE", "T"), ("BITPIX", 8), ("NAXIS", 1), ("NAXIS1", n_mib * MiB)])
    body = _gzip_stream([head] + [b"\0" * MiB] * n_mib)
    return body if members == 1 else body + _gzip_stream([b"\0" * 10])


HOSTILE_SPECTRA = {
    # name: (bytes, what the message names)
    "huge_image.fits": (lambda tmp: _image(10**9, 10**6), r"NAXIS1 = 1000000000, NAXIS2 = 1000000"),
    "huge_image_astropy_path.fits": (lambda tmp: _image(10**9, 10**6, extra=[]), r"NAXIS1 = 1000000000, NAXIS2 = 1000000"),
    "negative_naxis.fits": (lambda tmp: _image(-5, 3), r"NAXIS1 = -5 must be >= 0"),
    "zero_naxis.fits": (lambda tmp: _image(0, 5), r"NAXIS1 = 0 must be >= 1"),
    "float_naxis.fits": (lambda tmp: _image(10, 3.5), r"NAXIS2 = 3\.5 is not an integer"),
    "bitpix.fits": (lambda tmp: _image(10, 3, bitpix=12), r"BITPIX = 12 is not a FITS value"),
    "no_end.fits": (lambda tmp: _image(10, 3, end=False), r"no END card"),
    "table_rows.fits": (lambda tmp: _patched(_lamost_table_bytes(tmp), "NAXIS2", 10**12),
                        r"HDU 1 declares \d+ bytes of data \(BITPIX = 8, NAXIS1 = 46800, NAXIS2 = 1000000000000\)"),
    "tile_image.fits": (lambda tmp: _patched(_patched(_compressed_bytes(tmp), "ZNAXIS1", 10**9), "ZNAXIS2", 10**6),
                        r"HDU 1 is a tile-compressed image declaring ZBITPIX = -32, ZNAXIS1 = 1000000000, ZNAXIS2 = 1000000"),
    "tile_table.fits": (lambda tmp: _patched(_compressed_bytes(tmp), "NAXIS2", 10**9),
                        r"HDU 1 declares \d+ bytes of data \(BITPIX = 8, NAXIS1 = \d+, NAXIS2 = 1000000000, PCOUNT = \d+\)"),
    "bomb.fits.gz": (lambda tmp: _gzip_bomb(300), r"the gzip file says it inflates to 314575680 bytes.*MAX_SPECTRUM_BYTES"),
}


def _refused(path, says, limit=50 * MiB):
    from cannonade.exceptions import SpectrumFormatError
    from cannonade.spectra.readers import read_spectrum

    tracemalloc.start()
    try:
        with pytest.raises(SpectrumFormatError) as info:
            read_spectrum(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(f"{path}: ") and re.search(says, message), message
    assert peak < limit, (peak, message)
    return message


@pytest.mark.parametrize("name", sorted(HOSTILE_SPECTRA))
def test_hostile_spectrum_files_are_refused_before_allocating(tmp_path, name):
    make, says = HOSTILE_SPECTRA[name]
    path = tmp_path / name
    path.write_bytes(make(tmp_path))
    _refused(path, says)


@pytest.mark.parametrize("isal", [True, False], ids=["isal", "zlib"])
def test_a_gzip_bomb_is_inflated_no_further_than_the_limit(tmp_path, monkeypatch, isal):
    """Several members (the trailer of the last says nothing): inflated incrementally, stopped past
    MAX_SPECTRUM_BYTES (here 4 MiB), with ISA-L and with zlib."""
    import builtins

    from cannonade.spectra.readers import fits as fits_reader

    if isal:
        pytest.importorskip("isal")
    else:
        real_import = builtins.__import__

        def no_isal(name, *args, **kwargs):
            if name == "isal" or name.startswith("isal."):
                raise ImportError("isal hidden by the test")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_isal)
    monkeypatch.setattr(fits_reader, "MAX_SPECTRUM_BYTES", 4 * MiB)
    path = tmp_path / "bomb.fits.gz"
    path.write_bytes(_gzip_bomb(40, members=2))  # 40 MiB once inflated
    _refused(path, r"the gzip file inflates to more than 4194304 bytes", limit=3 * 4 * MiB)
    good = tmp_path / "good.fits.gz"  # a legitimate file under the limit still reads
    good.write_bytes(_gzip_stream([_lamost_image_file(tmp_path / "good.fits").read_bytes()]))
    from cannonade.spectra.readers import read_spectrum

    assert read_spectrum(good).flux.size == 3900


def test_oversized_and_special_files_are_refused_unread(tmp_path):
    big = tmp_path / "big.fits"
    with open(big, "wb") as fh:  # sparse: takes no disk space
        fh.truncate(256 * MiB + 1)
    _refused(big, r"268435457 bytes, more than a spectrum file may hold \(MAX_SPECTRUM_BYTES = 268435456\); refused unread")
    if Path("/dev/zero").exists():
        _refused(Path("/dev/zero"), r"not a regular file")
    if hasattr(os, "mkfifo"):  # a FIFO without a writer: refused at once, not waited on
        fifo = tmp_path / "spectrum.fits"
        os.mkfifo(fifo)
        _refused(fifo, r"not a regular file")
    _refused(tmp_path, r"is a directory")


def test_hostile_spectra_go_to_the_ingest_error_report_and_the_others_are_stored(tmp_path):
    """Every hostile file in the error report with its reason; the good ones stored exactly as without them."""
    import h5py

    from cannonade.spectra.ingest import ingest

    (tmp_path / "good").mkdir()
    good = [_lamost_image_file(tmp_path / "good" / f"g{i}.fits", seed=i) for i in range(4)]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, p in enumerate(good):
        (mixed / f"{i}_{p.name}").write_bytes(p.read_bytes())
    for name, (make, _) in HOSTILE_SPECTRA.items():
        (mixed / f"{len(name) % 4}_{name}").write_bytes(make(tmp_path))
    rep = ingest([str(mixed)], tmp_path / "mixed.h5", workers=1, chunk_size=3)
    clean = ingest([str(tmp_path / "good")], tmp_path / "clean.h5", workers=1, chunk_size=3)
    assert rep.n_ok == clean.n_ok == 4 and rep.n_failed == len(HOSTILE_SPECTRA)
    reasons = {Path(f).name.split("_", 1)[1]: reason for f, reason in rep.failures}
    for name, (_, says) in HOSTILE_SPECTRA.items():
        assert re.search(says, reasons[name]), (name, reasons[name])
    with h5py.File(tmp_path / "mixed.h5", "r") as a, h5py.File(tmp_path / "clean.h5", "r") as b:
        assert a["flux"][()].tobytes() == b["flux"][()].tobytes() and a["ivar"][()].tobytes() == b["ivar"][()].tobytes()
        np.testing.assert_array_equal(a["meta/obj_id"][()], b["meta/obj_id"][()])


# ---------------------------------------------------------------------------------------------
# (f) Parquet catalogues with crafted footers. The footer (Thrift compact protocol) is decoded,
# edited and re-encoded by the small codec below, so the file is a byte-level forgery (not a
# patched pyarrow object): pyarrow itself reads the crafted numbers.


def _uvarint(b, i):
    shift = out = 0
    while True:
        c = b[i]
        i += 1
        out |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return out, i


def _to_varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _thrift_value(b, i, t):
    if t in (1, 2):  # a struct field's bool lives in its type
        return t == 1, i
    if t == 3:
        return b[i], i + 1
    if t in (4, 5, 6):  # zigzag varints
        n, i = _uvarint(b, i)
        return (n >> 1) ^ -(n & 1), i
    if t == 7:
        return b[i:i + 8], i + 8
    if t == 8:
        n, i = _uvarint(b, i)
        return bytes(b[i:i + n]), i + n
    if t in (9, 10):  # list, set
        n, et = b[i] >> 4, b[i] & 15
        i += 1
        if n == 15:
            n, i = _uvarint(b, i)
        items = []
        for _ in range(n):
            if et in (1, 2):
                v, i = b[i] == 1, i + 1
            else:
                v, i = _thrift_value(b, i, et)
            items.append(v)
        return [et, items], i
    if t == 11:  # map
        n, i = _uvarint(b, i)
        kt = vt = 0
        if n:
            kt, vt = b[i] >> 4, b[i] & 15
            i += 1
        pairs = []
        for _ in range(n):
            k, i = _thrift_value(b, i, kt)
            v, i = _thrift_value(b, i, vt)
            pairs.append((k, v))
        return [kt, vt, pairs], i
    if t == 12:
        return _thrift_struct(b, i)
    raise ValueError(f"thrift type {t}")


def _thrift_struct(b, i=0):
    """[[field id, type, value], ...] of the struct at byte i, and the byte after it."""
    fields, last = [], 0
    while b[i]:
        t, delta = b[i] & 15, b[i] >> 4
        i += 1
        if delta:
            fid = last + delta
        else:
            n, i = _uvarint(b, i)
            fid = (n >> 1) ^ -(n & 1)
        v, i = _thrift_value(b, i, t)
        fields.append([fid, t, v])
        last = fid
    return fields, i + 1


def _thrift_encode(t, v):
    if t in (1, 2):
        return b""
    if t == 3:
        return bytes([v])
    if t in (4, 5, 6):
        return _to_varint((v << 1) ^ (v >> 63))
    if t == 7:
        return bytes(v)
    if t == 8:
        return _to_varint(len(v)) + v
    if t in (9, 10):
        et, items = v
        head = bytes([(len(items) << 4) | et]) if len(items) < 15 else bytes([0xF0 | et]) + _to_varint(len(items))
        return head + b"".join(bytes([1 if x else 2]) if et in (1, 2) else _thrift_encode(et, x) for x in items)
    if t == 11:
        kt, vt, pairs = v
        if not pairs:
            return b"\0"
        return _to_varint(len(pairs)) + bytes([(kt << 4) | vt]) + b"".join(_thrift_encode(kt, k) + _thrift_encode(vt, x) for k, x in pairs)
    return _thrift_write(v)


def _thrift_write(fields):
    out, last = bytearray(), 0
    for fid, t, v in fields:
        delta = fid - last
        out += bytes([(delta << 4) | t]) if 0 < delta <= 15 else bytes([t]) + _to_varint((fid << 1) ^ (fid >> 63))
        out += _thrift_encode(t, v)
        last = fid
    return bytes(out) + b"\0"


def _get(fields, fid):
    return next(f for f in fields if f[0] == fid)


def _forge_footer(path, edit):
    """Rewrite the Parquet footer of ``path`` (FileMetaData) through ``edit(fields)``."""
    raw = Path(path).read_bytes()
    n = struct.unpack("<I", raw[-8:-4])[0]
    meta, end = _thrift_struct(raw[-8 - n:-8])
    assert end == n and _thrift_write(meta) == raw[-8 - n:-8]  # the codec round-trips the real footer
    edit(meta)
    new = _thrift_write(meta)
    Path(path).write_bytes(raw[:-8 - n] + new + struct.pack("<I", len(new)) + b"PAR1")


def _row_groups(meta):  # FileMetaData.row_groups (4)
    return _get(meta, 4)[2][1]


def _column_meta(row_group):  # RowGroup.columns (1) -> ColumnChunk.meta_data (3)
    return [_get(cc, 3)[2] for cc in _get(row_group, 1)[2][1]]


def _absurd_rows(meta):  # FileMetaData.num_rows (3) and RowGroup.num_rows (3), consistently
    _get(meta, 3)[2] = 10**12
    for rg in _row_groups(meta):
        _get(rg, 3)[2] = 10**12


def _absurd_uncompressed(meta):  # ColumnMetaData.total_uncompressed_size (6)
    _get(_column_meta(_row_groups(meta)[0])[1], 6)[2] = 10**15


def _beyond_the_file(meta):  # ColumnMetaData.total_compressed_size (7)
    _get(_column_meta(_row_groups(meta)[0])[1], 7)[2] = 10**12


def _rows_disagree(meta):
    _get(meta, 3)[2] = 7


@pytest.mark.parametrize("edit, says", [
    (_absurd_rows, r"the footer declares 1000000000000 rows in 1 row group\(s\).*refused before reading"),
    (_absurd_uncompressed, r"the footer declares 3 rows .* column 'teff' of 1000000000000000 bytes uncompressed.*refused before reading"),
    (_beyond_the_file, r"row group 0, column '\w+' declares 1000000000000 bytes at byte \d+, beyond the end of the file"),
    (_rows_disagree, r"the footer declares 7 rows but its row groups hold 3"),
], ids=["rows", "uncompressed", "compressed", "sum"])
def test_parquet_catalogue_with_a_crafted_footer_is_refused_before_reading(catalogue, monkeypatch, edit, says):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cannonade.tables import read_table

    path = catalogue["parquet"]
    _forge_footer(path, edit)
    assert pq.read_metadata(path).num_row_groups == 1  # pyarrow reads the forged footer

    def no_data(*args, **kwargs):
        raise AssertionError("the data were read")

    monkeypatch.setattr(pq, "read_table", no_data)
    allocated = pa.total_allocated_bytes()
    for read in (read_catalogue, read_table):  # the catalogue reader and the user-table reader
        with pytest.raises(CatalogueError, match=re.escape(str(path)) + ": " + says):
            read(path)
    assert pa.total_allocated_bytes() - allocated < MiB


def test_the_parquet_checks_keep_real_catalogues_reading(catalogue, tmp_path):
    from cannonade.tables import read_table

    t = Table(dict(designation=[f"s{i}" for i in range(20000)], teff=np.full(20000, 5000.0), logg=np.full(20000, 4.0),
                   n_obs=np.ones(20000, dtype=np.int64)))
    constant = write_catalogue(t, tmp_path / "constant.parquet", schema="wheeler2020", label_names=["teff", "logg"])
    for path in (catalogue["parquet"], constant):  # constant columns compress far, and still read
        assert len(read_catalogue(path)) == len(read_table(path)) > 0
