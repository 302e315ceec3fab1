"""Hostile inputs (issue 16): nothing unpickles or evaluates, cuts go through the restricted parser,
no configured name writes outside the run directory, and crafted model, store and catalogue
files are refused with a named error before anything they declare is allocated."""

import ast
import json
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
