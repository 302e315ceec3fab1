"""The command line: every handler lives in cannonade.cli; errors end in one line and exit 2."""

import shutil

import pytest

from cannonade.cli import build_parser, main


def test_from_lists_the_stage_names(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out.replace("\n", " ")
    for stage in ("ingest", "crossmatch", "clean", "infer", "combine", "catalogue"):
        assert stage in out
    assert main(["run", "missing.toml", "--from", "infer"]) == 2


def test_every_option_has_help_with_its_default():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.dest in ("help",):
                continue
            assert action.help, f"{name} {action.dest} has no help"


def test_missing_config_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.toml" in err[0] and err[0].startswith("cannonade run: error:")


def test_cli_ingest(shared_data, tmp_path, capsys):
    files = sorted((shared_data / "lamost_dr1" / "spectra").glob("*.fits"))[:4]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "zz_notfits.fits").write_bytes(b"name,z\nfoo,0.1\n")
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "cli.h5"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "ingested 4 spectra" in out and "1 failed" in out and "cli.errors.csv" in out
