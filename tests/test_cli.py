"""The command line: every handler lives in cannonade.cli; errors end in one line and exit 2."""

import argparse
import shutil

import pytest

from cannonade.cli import HelpFormatter, build_parser, main


def test_from_lists_the_stage_names(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out.replace("\n", " ")
    for stage in ("ingest", "crossmatch", "clean", "infer", "combine", "catalogue"):
        assert stage in out
    assert main(["run", "missing.toml", "--from", "infer"]) == 2


def subparsers(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from subparsers(sub, prefix + (name,))


COMMANDS = {path: sub for path, sub in subparsers(build_parser())}


def test_the_user_commands_exist():
    for path in [("demo",), ("simulate",), ("ingest",), ("run",), ("match",), ("train",), ("cv",), ("infer",), ("config", "init")]:
        assert path in COMMANDS, path


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p))
def test_every_option_has_help_with_its_default(path):
    sub = COMMANDS[path]
    fmt = HelpFormatter(prog="x")
    for action in sub._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help, f"cannonade {' '.join(path)} {action.dest}: no help"
        if action.option_strings:
            text = fmt._get_help_string(action).lower()
            assert "default" in text or "required" in text, f"cannonade {' '.join(path)} {action.option_strings}: {text}"


def test_help_renders(capsys):
    for path in COMMANDS:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*path, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--model-by" in out and "(default: chi2)" in out


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


def test_run_help_lists_every_stage_in_order(capsys):
    """`cannonade run --help`: --from names every stage of the recipe, in pipeline order (issue 12)."""
    from cannonade.pipeline import STAGES

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ", ".join(STAGES) in out
