"""Every CLI command x every class of bad input: exit status 2 and ONE line on stderr naming the
file, column, key or option at fault -- never a traceback (issue 16; docs/reliability.md, "The
command line").

One small set of valid inputs is built once for the module (a 60-star lamost-galah mock, its
store, a matched labels table, two tiny models, a run configuration, a minimal run directory);
each case then breaks one thing. The commands run in-process (``cannonade.cli.main``). A case
that would start real work (a demo, a pipeline) only ever reaches the validation: the expensive
entry points are replaced by a tripwire. About 15 s on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

from cannonade.cli import main

LABELS = "teff,logg,fe_h"

RUN_CONFIG = """
[run]
out = "{out}"
chunk_size = 100
workers = 1

[target]
spectra = "{mock}/lamost/spectra"
catalogue = "{mock}/lamost/catalogue.fits"

[reference]
catalogue = "{mock}/galah/catalogue.fits"
spectra = "{mock}/galah/spectra"

[reference.columns]
snr_c1 = "snr_c1_iraf"
chi2_cannon = "chi2_sp"
flag_cannon = "flag_sp"

[models.dwarf]
labels = ["teff", "logg", "mean_alpha_fe"]

[models.giant]
labels = ["teff", "logg", "fe_h"]

[training]
cv_folds = 2
min_stars = 5

[dynamics]
gaia = "{mock}/gaia/catalogue.fits"
n_samples = 2
"""


def run_cli(capsys, argv):
    """(exit status, stdout, stderr) of ``cannonade ARGV`` run in this process."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own exit (--help)
        rc = exc.code
    except Exception as exc:  # a traceback: the test says which, readably
        pytest.fail(f"cannonade {' '.join(map(str, argv))}: traceback {type(exc).__name__}: {exc}")
    out, err = capsys.readouterr()
    return rc, out, err


def assert_error_line(capsys, argv, *names):
    """The command fails with exit status 2 and one non-empty stderr line naming every ``names`` (a '-'
    may be spelt '_': ``--chunk-size`` / ``chunk_size``)."""
    rc, out, err = run_cli(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    command = argv[0]
    assert rc == 2, f"cannonade {' '.join(map(str, argv))}: exit status {rc}; stderr: {err!r}; stdout: {out[-500:]!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err!r}"
    assert "Traceback" not in err
    assert lines[0].startswith(f"cannonade {command}: error: "), lines[0]
    for name in names:  # an option may be named as the command line spells it or as the parameter it sets
        assert str(name).replace("-", "_") in lines[0].replace("-", "_"), f"{name!r} not named in: {lines[0]}"
    return lines[0]


# --------------------------------------------------------------------------- the valid inputs


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """The valid inputs (and files to break them with) of every command."""
    from cannonade.simulate import simulate_survey

    def cli(*argv):
        assert main([str(a) for a in argv]) == 0

    root = tmp_path_factory.mktemp("cli_inputs")
    ns = types.SimpleNamespace(root=root)
    ns.mock = root / "mock"
    simulate_survey("lamost-galah", n_stars=60, seed=1, out=ns.mock, reference_fraction=0.5, show_progress=False)
    ns.spectra = ns.mock / "lamost" / "spectra"
    ns.store = root / "store.h5"
    cli("ingest", ns.spectra, "--out", ns.store, "--workers", "1")
    ns.labels = root / "labels.fits"
    cli("match", ns.mock / "galah" / "catalogue.fits", ns.store, "--out", ns.labels)
    ns.labels_csv = root / "labels.csv"
    from astropy.table import Table

    t = Table.read(ns.labels)
    t.keep_columns(["obj_id", "sobject_id", "teff", "logg", "fe_h", "ra", "dec"])
    t.write(ns.labels_csv, format="ascii.csv")
    for name in ("dwarf", "giant"):
        model = root / f"{name}.npz"
        cli("train", ns.labels, ns.store, "--labels", LABELS, "--out", model, "--no-calibrate")
        setattr(ns, name, model)
    ns.model = ns.dwarf
    ns.config = root / "run.toml"
    ns.config.write_text(RUN_CONFIG.format(out=(root / "run").as_posix(), mock=ns.mock.as_posix()))
    ns.run_dir = root / "rundir"
    (ns.run_dir / "stages").mkdir(parents=True)
    # things to give instead
    ns.file = root / "a_file.txt"
    ns.file.write_text("not a directory\n")
    ns.dirs = root / "dirs"
    for name in ("labels.fits", "labels.csv", "store.h5", "model.npz", "run.toml", "out.npz", "out.fits", "out.h5",
                 "out.toml", "spectrum.fits"):
        (ns.dirs / name).mkdir(parents=True)
    ns.empty = root / "empty"
    ns.empty.mkdir()
    for name in ("labels.fits", "labels.csv", "store.h5", "model.npz", "run.toml", "spectrum.fits", "catalogue.fits"):
        (ns.empty / name).write_bytes(b"")
    ns.cut = root / "truncated"
    ns.cut.mkdir()
    for src, name in ((ns.labels, "labels.fits"), (ns.store, "store.h5"), (ns.model, "model.npz"),
                      (sorted(ns.spectra.iterdir())[0], "spectrum.fits.gz"), (ns.config, "run.toml"),
                      (ns.mock / "lamost" / "catalogue.fits", "catalogue.fits")):
        raw = Path(src).read_bytes()
        (ns.cut / name).write_bytes(raw[: len(raw) // 2])
    ns.galah_file = sorted((ns.mock / "galah" / "spectra").iterdir())[0]
    ns.galah_store = root / "galah.h5"
    galah_files = sorted((ns.mock / "galah" / "spectra").iterdir())[:8]  # two stars, four CCDs each
    cli("ingest", *galah_files, "--out", ns.galah_store, "--workers", "1", "--grid", "galah")
    ns.missing = root / "no_such_file"
    return ns


@pytest.fixture(autouse=True)
def _no_real_work(monkeypatch):
    """A bad input must be refused before any real work: no pipeline stage after the first (ingest,
    which fails at once on missing spectra) runs here, and no mock of more than 100 stars is
    simulated (the demo's)."""
    import cannonade.simulate
    from cannonade.pipeline.stages import crossmatch, ingest

    def no_stage(*args, **kwargs):
        raise AssertionError("a bad input reached the pipeline's real work")

    real = cannonade.simulate.simulate_survey

    def small_only(*args, n_stars=500, **kwargs):
        if n_stars > 100:
            raise AssertionError(f"a bad input started a {n_stars}-star simulation")
        return real(*args, n_stars=n_stars, **kwargs)

    monkeypatch.setattr(ingest, "ingest", no_stage)  # the stage's reading of the spectra
    monkeypatch.setattr(crossmatch, "execute", no_stage)
    monkeypatch.setattr(cannonade.simulate, "simulate_survey", small_only)


def config_text(d, **edits):
    """The valid run configuration with TOML lines replaced or added: ``{'[section] key': 'key = value'}``."""
    text = RUN_CONFIG.format(out=(d.root / "run").as_posix(), mock=d.mock.as_posix())
    for where, line in edits.items():
        section, key = where.split(" ")
        lines = text.splitlines()
        if section not in lines:
            lines += [section]
        start = lines.index(section)
        for i in range(start + 1, len(lines) + 1):
            if i == len(lines) or lines[i].startswith("["):
                lines.insert(i, line)  # a key the section did not have
                break
            if lines[i].split("=")[0].strip() == key:
                lines[i] = line
                break
        text = "\n".join(lines) + "\n"
    return text


# --------------------------------------------------------------------------- missing files

MISSING = {
    "run config": lambda d: (["run", d.missing], [d.missing]),
    "train labels": lambda d: (["train", d.missing, d.store, "--labels", LABELS, "--out", d.root / "x.npz"], [d.missing]),
    "train store": lambda d: (["train", d.labels, d.missing, "--labels", LABELS, "--out", d.root / "x.npz"], [d.missing]),
    "cv labels": lambda d: (["cv", d.missing, d.store, "--labels", LABELS, "--out", d.root / "cvx"], [d.missing]),
    "cv store": lambda d: (["cv", d.labels, d.missing, "--labels", LABELS, "--out", d.root / "cvx"], [d.missing]),
    "infer model": lambda d: (["infer", d.missing, d.store, "--out", d.root / "x.fits"], [d.missing]),
    "infer store": lambda d: (["infer", d.model, d.missing, "--out", d.root / "x.fits"], [d.missing]),
    "infer catalogue": lambda d: (["infer", d.dwarf, d.giant, d.store, "--out", d.root / "x.fits", "--model-by",
                                   "wheeler2020", "--catalogue", d.missing], [d.missing]),
    "match catalogue": lambda d: (["match", d.missing, d.store, "--out", d.root / "x.fits"], [d.missing]),
    "match store": lambda d: (["match", d.labels, d.missing, "--out", d.root / "x.fits"], [d.missing]),
    "ingest spectrum": lambda d: (["ingest", d.missing, "--out", d.root / "x.h5", "--workers", "1"], [d.missing]),
    "ingest list": lambda d: (["ingest", f"@{d.missing}", "--out", d.root / "x.h5"], [d.missing]),
    "ingest redshifts": lambda d: (["ingest", d.spectra, "--out", d.root / "x.h5", "--redshift-catalogue", d.missing],
                                   [d.missing]),
    "report run directory": lambda d: (["report", d.missing], [d.missing]),
    "run target catalogue": lambda d: (["run", d.write_config(target_catalogue=d.missing)], [d.missing]),
    "run target spectra": lambda d: (["run", d.write_config(target_spectra=d.missing)], [d.missing]),
    "run reference catalogue": lambda d: (["run", d.write_config(reference_catalogue=d.missing)], [d.missing]),
    "run gaia catalogue": lambda d: (["run", d.write_config(gaia=d.missing)], [d.missing]),
}


@pytest.fixture
def dd(d, tmp_path):
    """``d`` with ``write_config(**paths)``: a run configuration in ``tmp_path`` with some paths replaced."""
    keys = {"target_catalogue": "[target] catalogue", "target_spectra": "[target] spectra",
            "reference_catalogue": "[reference] catalogue", "reference_spectra": "[reference] spectra",
            "gaia": "[dynamics] gaia", "out": "[run] out"}

    def write_config(text=None, **paths):
        edits = {keys[k]: f'{keys[k].split(" ")[1]} = "{Path(v).as_posix()}"' for k, v in paths.items()}
        path = tmp_path / "run.toml"
        path.write_text(text if text is not None else config_text(d, **edits))
        return path

    return types.SimpleNamespace(**vars(d), write_config=write_config, tmp=tmp_path)


@pytest.mark.parametrize("case", list(MISSING))
def test_a_missing_file(dd, capsys, case):
    argv, names = MISSING[case](dd)
    assert_error_line(capsys, argv, *names)


# --------------------------------------------------------------------------- a directory for a file, a file for a directory

WRONG_KIND = {
    "run config is a directory": lambda d: (["run", d.dirs / "run.toml"], [d.dirs / "run.toml"]),
    "train labels is a directory": lambda d: (["train", d.dirs / "labels.fits", d.store, "--labels", LABELS, "--out",
                                               d.tmp / "x.npz"], [d.dirs / "labels.fits"]),
    "train store is a directory": lambda d: (["train", d.labels, d.dirs / "store.h5", "--labels", LABELS, "--out",
                                              d.tmp / "x.npz"], [d.dirs / "store.h5"]),
    "train out is a directory": lambda d: (["train", d.labels, d.store, "--labels", LABELS, "--out", d.dirs / "out.npz",
                                            "--no-calibrate"], [d.dirs / "out.npz"]),
    "train out inside a file": lambda d: (["train", d.labels, d.store, "--labels", LABELS, "--out", d.file / "x.npz",
                                           "--no-calibrate"], [d.file]),
    "cv out is a file": lambda d: (["cv", d.labels, d.store, "--labels", LABELS, "--k", "2", "--out", d.file], [d.file]),
    "infer model is a directory": lambda d: (["infer", d.dirs / "model.npz", d.store, "--out", d.tmp / "x.fits"],
                                             [d.dirs / "model.npz"]),
    "infer store is a directory": lambda d: (["infer", d.model, d.dirs / "store.h5", "--out", d.tmp / "x.fits"],
                                             [d.dirs / "store.h5"]),
    "infer out is a directory": lambda d: (["infer", d.model, d.store, "--out", d.dirs / "out.fits"], [d.dirs / "out.fits"]),
    "infer out inside a file": lambda d: (["infer", d.model, d.store, "--out", d.file / "x.fits"], [d.file]),
    "match catalogue is a directory": lambda d: (["match", d.dirs / "labels.fits", d.store, "--out", d.tmp / "x.fits"],
                                                 [d.dirs / "labels.fits"]),
    "match out is a directory": lambda d: (["match", d.labels, d.store, "--out", d.dirs / "out.fits"], [d.dirs / "out.fits"]),
    "ingest out is a directory": lambda d: (["ingest", d.spectra, "--out", d.dirs / "out.h5", "--workers", "1"],
                                            [d.dirs / "out.h5"]),
    "ingest out inside a file": lambda d: (["ingest", d.spectra, "--out", d.file / "x.h5", "--workers", "1"], [d.file]),
    "report run directory is a file": lambda d: (["report", d.file], [d.file]),
    "report out is a file": lambda d: (["report", d.run_dir, "--out", d.file], [d.file]),
    "simulate out is a file": lambda d: (["simulate", "--out", d.file, "--n-stars", "5"], [d.file]),
    "demo out is a file": lambda d: (["demo", "--out", d.file, "--n-target", "50"], [d.file]),
    "config init path is a directory": lambda d: (["config", "init", d.dirs / "out.toml", "--force"], [d.dirs / "out.toml"]),
    "config init inside a file": lambda d: (["config", "init", d.file / "x.toml"], [d.file]),
    "run out is a file": lambda d: (["run", d.write_config(out=d.file)], [d.file]),
    "run target catalogue is a directory": lambda d: (["run", d.write_config(target_catalogue=d.dirs / "labels.fits")],
                                                      [d.dirs / "labels.fits"]),
    "run target spectra is a file": lambda d: (["run", d.write_config(target_spectra=d.file)], [d.file]),
}


@pytest.mark.parametrize("case", list(WRONG_KIND))
def test_a_directory_for_a_file_or_a_file_for_a_directory(dd, capsys, case):
    argv, names = WRONG_KIND[case](dd)
    assert_error_line(capsys, argv, *names)


# --------------------------------------------------------------------------- empty and truncated files

BROKEN = {
    "run empty config": lambda d: (["run", d.empty / "run.toml"], [d.empty / "run.toml", "target"]),
    "run truncated config": lambda d: (["run", d.cut / "run.toml"], [d.cut / "run.toml"]),
    "train empty labels (csv)": lambda d: (["train", d.empty / "labels.csv", d.store, "--labels", LABELS, "--out",
                                            d.tmp / "x.npz"], [d.empty / "labels.csv"]),
    "train empty labels (fits)": lambda d: (["train", d.empty / "labels.fits", d.store, "--labels", LABELS, "--out",
                                             d.tmp / "x.npz"], [d.empty / "labels.fits"]),
    "train truncated labels": lambda d: (["train", d.cut / "labels.fits", d.store, "--labels", LABELS, "--out",
                                          d.tmp / "x.npz"], [d.cut / "labels.fits"]),
    "train empty store": lambda d: (["train", d.labels, d.empty / "store.h5", "--labels", LABELS, "--out", d.tmp / "x.npz"],
                                    [d.empty / "store.h5"]),
    "train truncated store": lambda d: (["train", d.labels, d.cut / "store.h5", "--labels", LABELS, "--out",
                                         d.tmp / "x.npz"], [d.cut / "store.h5"]),
    "cv truncated labels": lambda d: (["cv", d.cut / "labels.fits", d.store, "--labels", LABELS, "--out", d.tmp / "cv"],
                                      [d.cut / "labels.fits"]),
    "infer empty model": lambda d: (["infer", d.empty / "model.npz", d.store, "--out", d.tmp / "x.fits"],
                                    [d.empty / "model.npz"]),
    "infer truncated model": lambda d: (["infer", d.cut / "model.npz", d.store, "--out", d.tmp / "x.fits"],
                                        [d.cut / "model.npz"]),
    "infer truncated store": lambda d: (["infer", d.model, d.cut / "store.h5", "--out", d.tmp / "x.fits"],
                                        [d.cut / "store.h5"]),
    "infer empty catalogue": lambda d: (["infer", d.dwarf, d.giant, d.store, "--out", d.tmp / "x.fits", "--model-by",
                                         "wheeler2020", "--catalogue", d.empty / "catalogue.fits"],
                                        [d.empty / "catalogue.fits"]),
    "infer truncated catalogue": lambda d: (["infer", d.dwarf, d.giant, d.store, "--out", d.tmp / "x.fits", "--model-by",
                                             "wheeler2020", "--catalogue", d.cut / "catalogue.fits"],
                                            [d.cut / "catalogue.fits"]),
    "infer a store of another survey": lambda d: (["infer", d.model, d.galah_store, "--out", d.tmp / "x.fits"],
                                                  [d.galah_store, "survey", "galah"]),
    "match empty catalogue": lambda d: (["match", d.empty / "catalogue.fits", d.store, "--out", d.tmp / "x.fits"],
                                        [d.empty / "catalogue.fits"]),
    "match truncated catalogue": lambda d: (["match", d.cut / "catalogue.fits", d.store, "--out", d.tmp / "x.fits"],
                                            [d.cut / "catalogue.fits"]),
    "ingest only an empty file": lambda d: (["ingest", d.empty / "spectrum.fits", "--out", d.tmp / "x.h5", "--workers", "1"],
                                            [d.empty / "spectrum.fits"]),
    "ingest only a truncated file": lambda d: (["ingest", d.cut / "spectrum.fits.gz", "--out", d.tmp / "x.h5", "--workers",
                                                "1"], [d.cut / "spectrum.fits.gz"]),
    "ingest only a catalogue": lambda d: (["ingest", d.mock / "lamost" / "catalogue.fits", "--out", d.tmp / "x.h5",
                                           "--workers", "1"], [d.mock / "lamost" / "catalogue.fits"]),
    "ingest galah CCDs without their other CCDs": lambda d: (["ingest", d.galah_file, "--out", d.tmp / "x.h5",
                                                              "--grid", "galah", "--join", "star", "--workers", "1"],
                                                             [d.galah_file, "missing CCD"]),
    "ingest empty redshift catalogue": lambda d: (["ingest", d.spectra, "--out", d.tmp / "x.h5", "--redshift-catalogue",
                                                   d.empty / "labels.csv"], [d.empty / "labels.csv"]),
    "run truncated target catalogue": lambda d: (["run", d.write_config(target_catalogue=d.cut / "catalogue.fits")],
                                                 [d.cut / "catalogue.fits"]),
    "run empty reference catalogue": lambda d: (["run", d.write_config(reference_catalogue=d.empty / "catalogue.fits")],
                                                [d.empty / "catalogue.fits"]),
    "report corrupt config.toml": lambda d: (["report", d.broken_run_dir("[run\nout = ")], ["config.toml"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_an_empty_truncated_or_wrong_file(dd, capsys, case):
    def broken_run_dir(text):
        run = dd.tmp / "brokenrun"
        (run / "stages").mkdir(parents=True)
        (run / "config.toml").write_text(text)
        return run

    dd.broken_run_dir = broken_run_dir
    argv, names = BROKEN[case](dd)
    assert_error_line(capsys, argv, *names)


def test_a_truncated_spectrum_among_good_ones_is_flagged(dd, capsys):
    """The documented flag: the file is in the error report, the other spectra are stored as without it."""
    good = sorted(dd.spectra.iterdir())[:3]
    for f in good:
        shutil.copy(f, dd.tmp / f.name)
    shutil.copy(dd.cut / "spectrum.fits.gz", dd.tmp / "zz_truncated.fits.gz")
    rc, out, err = run_cli(capsys, ["ingest", dd.tmp, "--out", dd.tmp / "s.h5", "--workers", "1"])
    assert rc == 0 and "ingested 3 spectra" in out and "1 failed" in out and "zz_truncated.fits.gz" in out
    from cannonade.spectra.store import SpectraStore

    with SpectraStore(dd.tmp / "s.h5") as st, SpectraStore(dd.store) as ref:
        rows = [list(ref.meta()["source_file"]).index(str(f)) for f in sorted(dd.spectra.iterdir())[:3]]
        np.testing.assert_array_equal(st.read()[0], ref.read_rows(np.array(rows))[0])


# --------------------------------------------------------------------------- catalogue columns

COLUMNS = {
    "train misspelt label": lambda d: (["train", d.labels, d.store, "--labels", "teff,logg,feh", "--out", d.tmp / "x.npz"],
                                       ["'feh'", "fe_h"]),
    "train misspelt label (csv)": lambda d: (["train", d.labels_csv, d.store, "--labels", "tef,logg", "--out",
                                              d.tmp / "x.npz"], ["'tef'", "teff"]),
    "train missing id column": lambda d: (["train", d.labels, d.store, "--labels", LABELS, "--id-column", "obj_idd",
                                           "--out", d.tmp / "x.npz"], ["'obj_idd'", "obj_id"]),
    "cv misspelt label": lambda d: (["cv", d.labels, d.store, "--labels", "teff,lgg", "--out", d.tmp / "cv"],
                                    ["'lgg'", "logg"]),
    "infer misspelt teff column": lambda d: (["infer", d.dwarf, d.giant, d.store, "--out", d.tmp / "x.fits", "--model-by",
                                              "wheeler2020", "--catalogue", d.labels, "--teff-column", "tef"],
                                             ["'tef'", "teff"]),
    "infer missing catalogue id column": lambda d: (["infer", d.dwarf, d.giant, d.store, "--out", d.tmp / "x.fits",
                                                     "--model-by", "wheeler2020", "--catalogue", d.labels,
                                                     "--catalogue-id-column", "objid"], ["'objid'"]),
    "match misspelt ra column": lambda d: (["match", d.labels, d.store, "--out", d.tmp / "x.fits", "--ra-column", "RA_deg"],
                                           ["RA_deg"]),
    "ingest redshift catalogue without z": lambda d: (["ingest", d.spectra, "--out", d.tmp / "x.h5",
                                                       "--redshift-catalogue", d.labels_csv], [d.labels_csv, "z"]),
    "run misspelt target column": lambda d: (["run", d.write_config(text=config_text(
        d, **{"[target] snr_column": 'snr_column = "snr_zz"'}))], ["snr_zz", "snrz"]),
    "run misspelt reference alias": lambda d: (["run", d.write_config(text=config_text(
        d, **{"[reference.columns] chi2_cannon": 'chi2_cannon = "chi2_spp"'}))], ["chi2_spp"]),
    "run unknown grid": lambda d: (["run", d.write_config(text=config_text(
        d, **{"[target] grid": 'grid = "lamots"'}))], ["target.grid", "lamots"]),
    "run misspelt model label": lambda d: (["run", d.write_config(text=config_text(
        d, **{"[models.giant] labels": 'labels = ["teff", "logg", "feh"]'}))], ["feh"]),
}


@pytest.mark.parametrize("case", list(COLUMNS))
def test_a_missing_or_misspelt_column(dd, capsys, case):
    argv, names = COLUMNS[case](dd)
    assert_error_line(capsys, argv, *names)


# --------------------------------------------------------------------------- the run configuration

CONFIGS = {
    "misspelt key": ({"[run] chunk_size": "chunk_sise = 100"}, ["chunk_sise", "did you mean 'chunk_size'"]),
    "misspelt section": ({"[training] cv_folds": "cv_fold = 2"}, ["cv_fold", "cv_folds"]),
    "wrong type (str for int)": ({"[run] chunk_size": 'chunk_size = "100"'}, ["run.chunk_size", "int"]),
    "wrong type (float for int)": ({"[run] workers": "workers = 1.5"}, ["run.workers", "int"]),
    "wrong type (str for bool)": ({"[clean] enabled": 'enabled = "yes"'}, ["clean.enabled", "bool"]),
    "wrong type (str for list)": ({"[models.giant] labels": 'labels = "teff"'}, ["models.giant.labels", "list"]),
    "chunk_size 0": ({"[run] chunk_size": "chunk_size = 0"}, ["run.chunk_size", ">= 1", "0"]),
    "workers 0": ({"[run] workers": "workers = 0"}, ["run.workers", ">= 1"]),
    "k 1": ({"[training] cv_folds": "cv_folds = 1"}, ["training.cv_folds", ">= 2"]),
    "order 0": ({"[training] order": "order = 0"}, ["training.order", ">= 1"]),
    "clean order 0": ({"[clean] order": "order = 0"}, ["clean.order", ">= 1"]),
    "n_samples -1": ({"[dynamics] n_samples": "n_samples = -1"}, ["dynamics.n_samples", "-1"]),
    "radius -1": ({"[crossmatch] radius_arcsec": "radius_arcsec = -1.0"}, ["crossmatch.radius_arcsec", "> 0"]),
    "percentile 0": ({"[clean] percentile": "percentile = 0.0"}, ["clean.percentile"]),
    "unknown normalise": ({"[target] normalise": 'normalise = "gauss"'}, ["target.normalise", "gaussian"]),
    "unknown section": ({"[x] y": "y = 1"}, ["'x'"]),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_bad_configuration(dd, capsys, case):
    edits, names = CONFIGS[case]
    path = dd.write_config(text=config_text(dd, **edits))
    assert_error_line(capsys, ["run", path], path, *names)


# --------------------------------------------------------------------------- numeric and other options

OPTIONS = {
    "run --workers 0": lambda d: (["run", d.config, "--workers", "0"], ["workers", "0"]),
    "ingest --workers 0": lambda d: (["ingest", d.spectra, "--out", d.tmp / "x.h5", "--workers", "0"], ["workers", "0"]),
    "ingest --chunk-size -1": lambda d: (["ingest", d.spectra, "--out", d.tmp / "x.h5", "--chunk-size", "-1"],
                                         ["chunk-size", "-1"]),
    "ingest --chunk-size 0": lambda d: (["ingest", d.spectra, "--out", d.tmp / "x.h5", "--chunk-size", "0"],
                                        ["chunk-size", "0"]),
    "ingest --grid nonsense": lambda d: (["ingest", d.spectra, "--out", d.tmp / "x.h5", "--grid", "4000:3000:10"],
                                         ["4000:3000:10"]),
    "train --k 1": lambda d: (["train", d.labels, d.store, "--labels", LABELS, "--out", d.tmp / "x.npz", "--k", "1"],
                              ["--k", "1"]),
    "train --order 0": lambda d: (["train", d.labels, d.store, "--labels", LABELS, "--out", d.tmp / "x.npz", "--order", "0"],
                                  ["--order", "0"]),
    "train --out not .npz": lambda d: (["train", d.labels, d.store, "--labels", LABELS, "--out", d.tmp / "x.txt"],
                                       ["x.txt", ".npz"]),
    "train --labels empty": lambda d: (["train", d.labels, d.store, "--labels", ",", "--out", d.tmp / "x.npz"],
                                       ["--labels"]),
    "train --labels repeated": lambda d: (["train", d.labels, d.store, "--labels", "teff,teff", "--out", d.tmp / "x.npz"],
                                          ["--labels", "teff"]),
    "train --k not a number": lambda d: (["train", d.labels, d.store, "--labels", LABELS, "--out", d.tmp / "x.npz", "--k",
                                          "two"], ["--k", "two"]),
    "cv --k 1": lambda d: (["cv", d.labels, d.store, "--labels", LABELS, "--out", d.tmp / "cv", "--k", "1"], ["k", "1"]),
    "cv --k 0": lambda d: (["cv", d.labels, d.store, "--labels", LABELS, "--out", d.tmp / "cv", "--k", "0"], ["k", "0"]),
    "cv --order 0": lambda d: (["cv", d.labels, d.store, "--labels", LABELS, "--out", d.tmp / "cv", "--k", "2", "--order",
                                "0"], ["order", "0"]),
    "cv --k more than stars": lambda d: (["cv", d.labels, d.store, "--labels", LABELS, "--out", d.tmp / "cv", "--k",
                                          "1000"], ["1000"]),
    "infer --chunk-size -1": lambda d: (["infer", d.model, d.store, "--out", d.tmp / "x.fits", "--chunk-size", "-1"],
                                        ["chunk-size", "-1"]),
    "infer --workers 0": lambda d: (["infer", d.model, d.store, "--out", d.tmp / "x.fits", "--workers", "0"],
                                    ["workers", "0"]),
    "infer --out unknown suffix": lambda d: (["infer", d.model, d.store, "--out", d.tmp / "x.txt"], ["x.txt"]),
    "infer --model-by wheeler2020 without a catalogue": lambda d: (["infer", d.dwarf, d.giant, d.store, "--out",
                                                                    d.tmp / "x.fits", "--model-by", "wheeler2020"],
                                                                   ["--catalogue"]),
    "infer --model-by nonsense": lambda d: (["infer", d.model, d.store, "--out", d.tmp / "x.fits", "--model-by", "best"],
                                            ["--model-by", "best"]),
    "infer two models of one name": lambda d: (["infer", d.dwarf, d.dwarf, d.store, "--out", d.tmp / "x.fits"],
                                               ["dwarf"]),
    "match --radius -1": lambda d: (["match", d.labels, d.store, "--out", d.tmp / "x.fits", "--radius", "-1"],
                                    ["--radius", "-1"]),
    "match --radius nan": lambda d: (["match", d.labels, d.store, "--out", d.tmp / "x.fits", "--radius", "nan"],
                                     ["--radius", "nan"]),
    "report --max-points 0": lambda d: (["report", d.run_dir, "--max-points", "0", "--out", d.tmp / "rep"],
                                        ["max-points", "0"]),
    "report --max-points -5": lambda d: (["report", d.run_dir, "--max-points", "-5", "--out", d.tmp / "rep"],
                                         ["max-points", "-5"]),
    "simulate --n-stars 0": lambda d: (["simulate", "--out", d.tmp / "m", "--n-stars", "0"], ["n-stars", "0"]),
    "simulate --n-stars -3": lambda d: (["simulate", "--out", d.tmp / "m", "--n-stars", "-3"], ["n-stars", "-3"]),
    "simulate --reference-fraction 2": lambda d: (["simulate", "--out", d.tmp / "m", "--n-stars", "5",
                                                   "--reference-fraction", "2"], ["reference-fraction", "2"]),
    "simulate --reference-fraction nan": lambda d: (["simulate", "--out", d.tmp / "m", "--n-stars", "5",
                                                     "--reference-fraction", "nan"], ["reference-fraction", "nan"]),
    "demo --n-target 0": lambda d: (["demo", "--out", d.tmp / "demo", "--n-target", "0"], ["n-target", "0"]),
    "demo --n-target -5": lambda d: (["demo", "--out", d.tmp / "demo", "--n-target", "-5"], ["n-target", "-5"]),
    "demo --n-reference 0": lambda d: (["demo", "--out", d.tmp / "demo", "--n-target", "100", "--n-reference", "0"],
                                       ["n-reference", "0"]),
    "demo --n-reference above --n-target": lambda d: (["demo", "--out", d.tmp / "demo", "--n-target", "100",
                                                       "--n-reference", "500"], ["n-reference", "500"]),
    "nandakumar demo --n-target 0": lambda d: (["demo", "--recipe", "nandakumar2022", "--out", d.tmp / "demo",
                                                "--n-target", "0"], ["n-target", "0"]),
    "nandakumar demo --n-reference": lambda d: (["demo", "--recipe", "nandakumar2022", "--out", d.tmp / "demo",
                                                 "--n-reference", "50"], ["n-reference", "wheeler2020"]),
    "config init without .toml": lambda d: (["config", "init", d.tmp / "c.txt"], ["c.txt", ".toml"]),
    "config init existing": lambda d: (["config", "init", d.config], [d.config, "--force"]),
    "run --from unknown stage": lambda d: (["run", d.config, "--from", "ingestt"], ["--from", "ingestt"]),
    "a command that does not exist": lambda d: (["trian"], ["trian"]),
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_a_bad_option(dd, capsys, case):
    argv, names = OPTIONS[case](dd)
    if argv[0] == "trian":
        rc, out, err = run_cli(capsys, argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and "trian" in lines[0] and lines[0].startswith("cannonade: error:"), err
        return
    assert_error_line(capsys, argv, *names)


# --------------------------------------------------------------------------- a read-only output directory


@pytest.fixture
def read_only(tmp_path):
    """A directory no file can be created in: mode 0o500, or for root (whom permissions do not stop)
    the immutable attribute (``chattr +i``, where the file system has it; else skipped)."""
    ro = tmp_path / "read_only"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o500)
        yield ro
        ro.chmod(0o700)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: a read-only directory cannot be made")
    try:
        yield ro
    finally:
        subprocess.run(["chattr", "-i", str(ro)], capture_output=True)


READ_ONLY = {
    "train": lambda d, ro: ["train", d.labels, d.store, "--labels", LABELS, "--out", ro / "m.npz", "--no-calibrate"],
    "cv": lambda d, ro: ["cv", d.labels, d.store, "--labels", LABELS, "--k", "2", "--out", ro / "cv"],
    "infer": lambda d, ro: ["infer", d.model, d.store, "--out", ro / "labels.fits"],
    "match": lambda d, ro: ["match", d.labels, d.store, "--out", ro / "m.fits"],
    "ingest": lambda d, ro: ["ingest", d.spectra, "--out", ro / "s.h5", "--workers", "1"],
    "report": lambda d, ro: ["report", d.run_dir, "--out", ro / "report"],
    "simulate": lambda d, ro: ["simulate", "--out", ro / "mock", "--n-stars", "5"],
    "config init": lambda d, ro: ["config", "init", ro / "c.toml"],
    "demo": lambda d, ro: ["demo", "--out", ro / "demo", "--n-target", "50"],
    "run": lambda d, ro: ["run", d.write_config(out=ro / "run")],
}


@pytest.mark.parametrize("case", list(READ_ONLY))
def test_a_read_only_output_directory(dd, capsys, read_only, case):
    argv = READ_ONLY[case](dd, read_only)
    assert_error_line(capsys, argv, read_only)


# --------------------------------------------------------------------------- non-ASCII paths work


def test_non_ascii_paths_work(d, tmp_path, capsys):
    """A valid path with non-ASCII characters (and a blank) is a correct result, end to end."""
    u = tmp_path / "spëctra ✓"
    (u / "in ✓").mkdir(parents=True)
    for f in sorted(d.spectra.iterdir()):
        shutil.copy(f, u / "in ✓" / f.name)
    store, labels, model = u / "störe.h5", u / "läbels.fits", u / "mödel.npz"
    assert run_cli(capsys, ["ingest", u / "in ✓", "--out", store, "--workers", "1"])[0] == 0
    assert run_cli(capsys, ["match", d.mock / "galah" / "catalogue.fits", store, "--out", labels])[0] == 0
    rc, out, err = run_cli(capsys, ["train", labels, store, "--labels", LABELS, "--out", model, "--k", "2"])
    assert rc == 0 and str(model) in out, err
    rc, out, err = run_cli(capsys, ["cv", labels, store, "--labels", LABELS, "--k", "2", "--out", u / "cv ✓"])
    assert rc == 0 and (u / "cv ✓" / "cv_summary.csv").is_file(), err
    for out_name in ("läbels_out.fits", "läbels_out.csv", "läbels_out.parquet"):
        rc, out, err = run_cli(capsys, ["infer", model, store, "--out", u / out_name])
        assert rc == 0 and (u / out_name).is_file(), err
    from astropy.table import Table

    from cannonade.cannon.model import CannonModel

    ref = Table.read(u / "läbels_out.fits")
    assert len(ref) == 72 and np.isfinite(np.asarray(ref["teff"], float)).mean() > 0.9
    assert CannonModel.load(model).name == "mödel"
    assert run_cli(capsys, ["config", "init", u / "rün.toml"])[0] == 0
    (u / "rün ✓" / "stages").mkdir(parents=True)
    assert run_cli(capsys, ["report", u / "rün ✓"])[0] == 0


def test_a_run_directory_with_an_empty_config_reports_what_it_lacks(dd, capsys):
    """A correct result: an empty config.toml reads as an absent one, the report says what it lacks."""
    run = dd.tmp / "run"
    (run / "stages").mkdir(parents=True)
    (run / "config.toml").write_text("")
    rc, out, err = run_cli(capsys, ["report", run])
    assert rc == 0 and "not drawn" in out and (run / "report" / "index.html").is_file(), err
