"""Stale stages (issue 12): a stage is redone when the configuration it reads or its inputs change.

Each stage's marker records a fingerprint of the configuration keys it reads (``CONFIG``), of the
files it reads outside the run directory (``INPUTS``, by size and modification time) and of the
previous stage's fingerprint. The unit tests check the fingerprint itself; the run tests use a
small mock (800 stars, no cleaning, no dynamics, ~25 s for the module on 2 cores) and copies of
one finished run, and tell a skipped stage from a redone one by its marker file (same bytes and
mtime) and by the run log — never by timing.
"""

import dataclasses
import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from cannonade.config import as_toml_dict, config_from_dict, load_config
from cannonade.exceptions import CannonadeError
from cannonade.pipeline import STAGES, WHEELER2020, run_pipeline
from cannonade.pipeline.recipes import RECIPES
from cannonade.config.toml_writer import toml_text
from cannonade.pipeline.fingerprints import (
    UNTRACKED,
    config_value,
    input_stats,
    stage_fingerprint,
    tracked_keys,
)
from cannonade.pipeline.stages import combine, cuts, ingest, train

MINIMAL = {"target": {"spectra": "spectra", "catalogue": "target.fits"}, "reference": {"catalogue": "reference.fits"}}


def _cfg(tmp_path, **sections):
    raw = json.loads(json.dumps(MINIMAL))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw, tmp_path)


# ---- the fingerprint of one stage


def test_a_stage_fingerprint_changes_only_with_what_the_stage_reads(tmp_path):
    base = _cfg(tmp_path)
    fp = stage_fingerprint(cuts, base).value
    # what cuts does not read
    for other in (dict(training={"cv_folds": 5}), dict(run={"workers": 7, "out": "elsewhere"}), dict(run={"seed": 3}),
                  dict(dynamics={"n_samples": 3}), dict(target={"teff_column": "TEFF"})):
        assert stage_fingerprint(cuts, _cfg(tmp_path, **other)).value == fp, other
    # what it reads
    for changed in (dict(cuts={"target": ["snrz >= 40"]}), dict(cuts={"reference": []}),
                    dict(reference={"columns": {"snr_c1": "snr_c1_iraf"}})):
        assert stage_fingerprint(cuts, _cfg(tmp_path, **changed)).value != fp, changed
    # the previous stage's fingerprint is part of it: a change upstream changes everything downstream
    assert stage_fingerprint(cuts, base, previous="0123").value != fp
    # single fields: run.seed is train's, window_chi2_factor is combine's and not train's
    assert stage_fingerprint(train, _cfg(tmp_path, run={"seed": 1})).value != stage_fingerprint(train, base).value
    factor = _cfg(tmp_path, calibration={"window_chi2_factor": 9.0})
    assert stage_fingerprint(train, factor).value == stage_fingerprint(train, base).value
    assert stage_fingerprint(combine, factor).value != stage_fingerprint(combine, base).value
    # run.out and run.workers change nothing anywhere
    moved = _cfg(tmp_path, run={"out": "other", "workers": 1})
    for stage in WHEELER2020.stages:
        assert stage_fingerprint(stage, moved).value == stage_fingerprint(stage, base).value, stage.NAME


def test_the_fingerprint_does_not_depend_on_how_paths_are_written(tmp_path):
    """Paths are resolved against the config file: relative or absolute, from any cwd, one fingerprint."""
    (tmp_path / "sub").mkdir()
    rel, absolute = tmp_path / "rel.toml", tmp_path / "sub" / "abs.toml"
    rel.write_text('[target]\nspectra = "spectra"\ncatalogue = "target.fits"\n[reference]\ncatalogue = "reference.fits"\n')
    absolute.write_text(f'[target]\nspectra = "{tmp_path}/spectra"\ncatalogue = "../target.fits"\n'
                        f'[reference]\ncatalogue = "{tmp_path}/reference.fits"\n')
    a, b = load_config(rel), load_config(absolute)
    for stage in WHEELER2020.stages:
        assert stage_fingerprint(stage, a).value == stage_fingerprint(stage, b).value, stage.NAME
    assert stage_fingerprint(ingest, a).value == stage_fingerprint(ingest, load_config(rel)).value  # no time in it


def test_changes_name_the_keys_and_inputs_that_changed(tmp_path):
    (tmp_path / "target.fits").write_bytes(b"x" * 10)
    base = stage_fingerprint(cuts, _cfg(tmp_path))
    recorded = {"fingerprint": base.value, "fingerprint_of": base.record()}
    assert base.changes(recorded) is None
    cut = stage_fingerprint(cuts, _cfg(tmp_path, cuts={"target": ["snrz >= 40"]}))
    assert cut.changes(recorded) == "configuration changed (cuts.target)"
    (tmp_path / "target.fits").write_bytes(b"x" * 11)
    both = stage_fingerprint(cuts, _cfg(tmp_path, reference={"columns": {"a": "b"}}))
    assert both.changes(recorded) == "configuration changed (reference.columns.a) and input changed (target.catalogue)"
    assert stage_fingerprint(cuts, _cfg(tmp_path), previous="abc").changes(
        {"fingerprint": "x", "fingerprint_of": stage_fingerprint(cuts, _cfg(tmp_path)).record()}) == "an earlier stage changed"


def test_every_configuration_key_is_read_by_some_stage():
    """A new config key must be claimed by the stage that reads it (CONFIG) or be UNTRACKED."""
    data = as_toml_dict(_cfg(Path("/")))
    stages = [stage for recipe in RECIPES.values() for stage in recipe.stages]
    claimed = {key for stage in stages for key in stage.CONFIG}
    for stage in stages:
        for key in (*stage.CONFIG, *stage.INPUTS):
            config_value(data, key)  # KeyError for a typo
        for key in stage.INPUTS:
            assert key in stage.CONFIG or key.split(".")[0] in stage.CONFIG, (stage.NAME, key)  # its path is configuration too
    for section, value in data.items():
        fields = [f"{section}.{k}" for k in value] if isinstance(value, dict) and section not in ("models",) else [section]
        for key in fields:
            assert key in claimed or section in claimed or key in UNTRACKED, f"no stage declares {key}"
    assert set(UNTRACKED) == {"run.out", "run.workers", "run.scheduler", "run.device"} and "run.seed" in tracked_keys(data)


def test_a_declared_key_that_does_not_exist_is_an_error(tmp_path):
    class Typo:
        NAME = "typo"
        CONFIG = ("cuts.targets",)

    with pytest.raises(CannonadeError, match="typo.*cuts.targets"):
        stage_fingerprint(Typo, _cfg(tmp_path))


def test_input_stats_are_cheap_identities(tmp_path):
    assert input_stats(None) is None and input_stats("") is None
    assert input_stats(tmp_path / "nope") == {"path": str(tmp_path / "nope"), "missing": True}
    f = tmp_path / "cat.fits"
    f.write_bytes(b"a" * 100)
    s = input_stats(f)
    assert s["size"] == 100 and s["mtime_ns"] == f.stat().st_mtime_ns and input_stats(f) == s
    os.utime(f, ns=(s["mtime_ns"], s["mtime_ns"] + 10**9))  # touched: same size, another time
    assert input_stats(f) != s
    d = tmp_path / "spectra"
    (d / "sub").mkdir(parents=True)
    (d / "a.fits").write_bytes(b"a" * 3)
    (d / "sub" / "b.fits").write_bytes(b"b" * 4)
    s = input_stats(d)
    assert (s["n_files"], s["bytes"]) == (2, 7) and s["mtime_ns"] == max(p.stat().st_mtime_ns for p in d.rglob("*.fits"))
    (d / "sub" / "c.fits").write_bytes(b"")
    assert input_stats(d)["n_files"] == 3


def test_the_config_copy_is_toml_that_loads_back(tmp_path):
    raw = {**MINIMAL, "reference": {"catalogue": "r.fits", "columns": {"snr c1": 'we"ird\\', "x": "ünï\x7f"}},
           "labels": {"derived": {}}, "training": {"regularization": 1e-7}, "run": {"out": "run"},
           "cuts": {"target": ["(flag & 3) == 0", "snrz >= 30.5"]}}
    cfg = config_from_dict(raw, tmp_path)
    text = toml_text(as_toml_dict(cfg), header="a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n")
    assert tomllib.loads(text) == as_toml_dict(cfg)
    assert config_from_dict(tomllib.loads(text), "/") == cfg
    with pytest.raises(CannonadeError, match="cannot write"):
        toml_text({"a": {"b": object()}})


# ---- runs


CONFIG = """
[run]
out = "run"
chunk_size = 300

[target]
spectra = "mock/lamost/spectra"
catalogue = "mock/lamost/catalogue.fits"

[reference]
catalogue = "mock/galah/catalogue.fits"
spectra = ""

[reference.columns]
snr_c1 = "snr_c1_iraf"
chi2_cannon = "chi2_sp"
flag_cannon = "flag_sp"

[cuts]
target = ["{cut}"]

[models.dwarf]
labels = ["teff", "logg", "fe_h"]

[models.giant]
labels = ["teff", "logg", "fe_h"]

[training]
cv_folds = 3
min_stars = 20

[calibration]
repeat_stars = 200

[dynamics]
enabled = false
gaia = "mock/gaia/catalogue.fits"

[catalogue]
formats = ["fits"]
"""


def write_config(directory, cut="snrz >= 30"):
    path = Path(directory) / "run.toml"
    path.write_text(CONFIG.format(cut=cut))
    return path


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    from cannonade.simulate import simulate_survey

    d = tmp_path_factory.mktemp("fingerprints")
    simulate_survey("lamost-galah", n_stars=800, seed=5, out=d / "mock", reference_fraction=0.5, show_progress=False)
    return d


@pytest.fixture(scope="module")
def finished(mock):
    return run_pipeline(write_config(mock))


def copy_of(run, work, cut="snrz >= 30"):
    """A copy of the finished run (markers with their bytes and mtimes) beside a link to the same mock."""
    work.mkdir()
    (work / "mock").symlink_to(run.out.parent / "mock")
    shutil.copytree(run.out, work / "run")
    (work / "run" / "run.log").unlink()
    return write_config(work, cut)


def markers(run_dir):
    """Each stage's marker: (bytes, mtime_ns), None where absent."""
    out = {}
    for s in STAGES:
        p = Path(run_dir) / "stages" / f"{s}.json"
        out[s] = (p.read_bytes(), p.stat().st_mtime_ns) if p.exists() else None
    return out


def executed(log_text):
    """Stages the run log says were executed (their result line), as opposed to skipped."""
    return re.findall(r"^\S+ \[(\w+)\] done in ", log_text, re.M)


@pytest.mark.slow
def test_unchanged_rerun_redoes_nothing(finished, tmp_path):
    cfg = copy_of(finished, tmp_path / "same")
    before = markers(tmp_path / "same" / "run")
    chunks = []
    run = run_pipeline(cfg, chunk_hook=lambda k, result: chunks.append(k))
    assert markers(run.out) == before and chunks == []
    text = run.path("run.log").read_text()
    assert executed(text) == [] and "redoing" not in text
    assert all(f"[{s}] already done, skipped (" in text for s in STAGES)


@pytest.mark.slow
def test_changing_a_cut_redoes_cuts_and_every_stage_after_it_not_before(finished, tmp_path):
    """The issue's acceptance test."""
    cfg = copy_of(finished, tmp_path / "cut", cut="snrz >= 60")
    before = markers(tmp_path / "cut" / "run")
    chunks = []
    run = run_pipeline(cfg, chunk_hook=lambda k, result: chunks.append(k))
    after = markers(run.out)
    i = STAGES.index("cuts")
    for s in STAGES[:i]:
        assert after[s] == before[s], s  # not touched: same bytes, same mtime
    text = run.path("run.log").read_text()
    assert "[cuts] configuration changed (cuts.target); redoing cuts and the 8 stages after it" in text
    assert executed(text) == STAGES[i:]
    assert sorted(chunks) == list(range(run.stage_info("infer")["n_chunks"]))  # every chunk inferred again
    old = {s: json.loads(before[s][0]) for s in STAGES}
    previous = old[STAGES[i - 1]]["fingerprint"]
    for s in STAGES[i:]:
        info = run.stage_info(s)
        assert info["fingerprint"] != old[s]["fingerprint"], s
        assert info["fingerprint_of"]["previous"] == previous, s  # the chain
        previous = info["fingerprint"]
    assert "target: snrz >= 60" in run.stage_info("cuts")["counts"]
    assert load_config(run.path("config.toml")).cuts.target == ("snrz >= 60",)
    # and once more, unchanged: nothing is redone
    again = markers(run.out)
    run_pipeline(cfg)
    assert markers(run.out) == again


@pytest.mark.slow
def test_the_run_keeps_a_copy_of_its_config(finished):
    copy = load_config(finished.path("config.toml"))
    assert dataclasses.replace(copy, source=None) == dataclasses.replace(finished.cfg, source=None)
    fp = finished.config_fingerprint
    assert fp in finished.path("config.toml").read_text() and f"configuration fingerprint {fp}" in finished.path("run.log").read_text()


@pytest.mark.slow
def test_a_changed_input_redoes_the_stages_that_read_it(finished, tmp_path):
    """Touching the Gaia catalogue (read only by dynamics) redoes dynamics and catalogue."""
    cfg = copy_of(finished, tmp_path / "gaia")
    before = markers(tmp_path / "gaia" / "run")
    gaia = finished.cfg.dynamics.gaia
    st = gaia.stat()
    try:
        os.utime(gaia, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        run = run_pipeline(cfg)
    finally:
        os.utime(gaia, ns=(st.st_atime_ns, st.st_mtime_ns))
    text = run.path("run.log").read_text()
    assert "[dynamics] input changed (dynamics.gaia); redoing dynamics and the 1 stage after it" in text
    assert executed(text) == ["dynamics", "catalogue"]
    after = markers(run.out)
    assert all(after[s] == before[s] for s in STAGES[:STAGES.index("dynamics")])


@pytest.mark.slow
def test_a_missing_marker_redoes_its_stage_and_the_later_ones(finished, tmp_path):
    cfg = copy_of(finished, tmp_path / "gone")
    (tmp_path / "gone" / "run" / "stages" / "combine.json").unlink()
    run = run_pipeline(cfg)
    text = run.path("run.log").read_text()
    assert "[combine] not finished; redoing combine and the 2 stages after it" in text
    assert executed(text) == ["combine", "dynamics", "catalogue"]


@pytest.mark.slow
def test_markers_without_a_fingerprint_are_kept_and_then_fingerprinted(finished, tmp_path):
    """Runs finished before fingerprints existed are not redone on upgrading; the log says they were not checked."""
    cfg = copy_of(finished, tmp_path / "old")
    for s in STAGES:
        p = tmp_path / "old" / "run" / "stages" / f"{s}.json"
        info = json.loads(p.read_text())
        p.write_text(json.dumps({k: v for k, v in info.items() if not k.startswith("fingerprint")}))
    chunks = []
    run = run_pipeline(cfg, chunk_hook=lambda k, result: chunks.append(k))
    text = run.path("run.log").read_text()
    assert executed(text) == [] and chunks == []
    assert text.count("without a fingerprint") == 1
    assert all(f"[{s}] already done, skipped unchecked" in text for s in STAGES)
    for s in STAGES:  # the same configuration: the same fingerprints as the original run
        assert run.stage_info(s)["fingerprint"] == finished.stage_info(s)["fingerprint"], s


@pytest.mark.slow
def test_vanished_spectra_do_not_make_finished_stages_stale(finished, tmp_path):
    """The demo may delete its mock spectra once ingested: a missing or emptied input keeps the finished stage."""
    spectra = finished.cfg.target.spectra
    away = spectra.with_name("spectra.away")
    for how in ("missing", "empty"):
        cfg = copy_of(finished, tmp_path / how)
        before = markers(tmp_path / how / "run")
        spectra.rename(away)
        try:
            if how == "empty":
                spectra.mkdir()
            run = run_pipeline(cfg)
        finally:
            if how == "empty":
                spectra.rmdir()
            away.rename(spectra)
        text = run.path("run.log").read_text()
        assert f"[ingest] input target.spectra ({spectra}) is missing or empty now; the finished stage is kept" in text, how
        assert executed(text) == [] and markers(run.out) == before, how
