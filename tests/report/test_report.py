"""`cannonade report RUN_DIR`: the page, its figures and summary.json, from a run directory's files only."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cannonade.cli import main
from cannonade.report import ReportError, RunDirectory, write_report

PKG = Path(__file__).resolve().parents[2] / "cannonade"


class Page(HTMLParser):
    """The images, links, ids, figure captions and table headers of a page."""

    def __init__(self, text):
        super().__init__()
        self.images, self.links, self.ids, self.captions, self.headers = [], [], set(), [], []
        self._caption = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a.get("src"))
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.captions.append("".join(self._caption))
            self._caption = None

    def handle_data(self, data):
        if self._caption is not None:
            self._caption.append(data)


def test_wheeler_report_page_figures_and_summary(wheeler_report):
    run, index = wheeler_report
    assert index == run / "report" / "index.html"
    text = index.read_text()
    page = Page(text)
    summary = json.loads((run / "report" / "summary.json").read_text())
    # the pinned summary keys, with the science functions' numbers
    wb, gr = summary["wide_binaries"], summary["gradient"]
    assert isinstance(wb["n_pairs"], int) and wb["n_pairs"] >= 3
    assert 0.0 <= wb["p_value"] < 0.05  # the planted twins are chemically closer than field pairs
    assert np.isfinite(gr["fe_h_per_kpc"]) and gr["e_fe_h_per_kpc"] > 0
    assert gr["fe_h_per_kpc"] < 0  # the toy catalogue's metallicity falls outwards
    # every figure: a PNG beside the page, drawn, with a one-line caption
    files = {f["file"] for f in summary["figures"]}
    expected = {"cv_dwarf.png", "cv_giant.png", "cv_models.png", "precision.png", "pulls_dwarf.png", "pulls_giant.png", "flag_rates.png",
                "theta_dwarf.png", "theta_giant.png", "model_vs_data.png", "kiel.png", "wide_binaries.png", "map_rz.png",
                "map_xy.png", "map_rvphi.png", "planes_ba_fe.png", "planes_eu_fe.png"}
    assert expected <= files, (expected - files, summary["not_drawn"])
    assert summary["not_drawn"] == {}
    assert set(page.images) == files
    for src in page.images:
        assert "/" not in src and (run / "report" / src).stat().st_size > 2000
    assert len(page.captions) == len(files)
    assert all(c.strip() and "\n" not in c for c in page.captions)
    # the run summary, CV and calibration tables, catalogue columns with units and descriptions
    for words in ("Run summary", "Stages", "Cuts", "Label sets", "Software", "config.toml", "Cross-validation",
                  "Error calibration", "noise_scale", "kde_lo", "Catalogue columns", "per_star", "per_observation",
                  "effective temperature", "kpc", "dex"):
        assert words in text, words
    assert "snrz &gt;= 30" in text  # the configured cuts, escaped
    assert re.search(r"<td>teff</td><td class=\"num\">", text)  # a CV row
    # links: anchors of the page and files beside it
    for href in page.links:
        assert not re.match(r"[a-z]+://", href), href
        if href.startswith("#"):
            assert href[1:] in page.ids, href
        else:
            assert (run / "report" / href).is_file(), href


def test_cli_report_of_a_nandakumar_run(small_runs, capsys):
    """`cannonade report` on a Nandakumar+2022 run: the four models' CV, the residuals, the systematics and
    cluster tables; the previous report's files are replaced; errors are one line and exit 2."""
    run = small_runs["nandakumar2022"]
    (run / "report").mkdir(exist_ok=True)
    (run / "report" / "stale.png").write_bytes(b"old")
    assert main(["report", str(run), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    index = run / "report" / "index.html"
    assert f"report:  {index}" in out and "not drawn: model_vs_data_target" in out
    assert not (run / "report" / "stale.png").exists()
    text = index.read_text()
    summary = json.loads(index.with_name("summary.json").read_text())
    files = {f["file"] for f in summary["figures"]}
    for name in ("ACGS", "ACAA", "GCAA", "GCGS"):
        assert f"cv_{name}.png" in files and f"theta_{name}.png" in files
    assert {"cv_models.png", "residuals.png", "kiel.png", "flag_rates.png"} <= files
    assert set(Page(text).images) == files
    assert "Survey systematics and clusters" in text and "after_apogee_scale" in text and "M67" in text
    # no dynamics: the science numbers are null, with the reason; the page says which figures are missing and why
    assert summary["wide_binaries"]["p_value"] is None and summary["gradient"]["fe_h_per_kpc"] is None
    assert "reason" in summary["wide_binaries"]
    assert "model_vs_data_target" in summary["not_drawn"] and "Not drawn" in text
    assert "combined_apogee_scale" in text and "Cannon estimate of effective temperature" in text

    assert main(["report", str(run / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cannonade report: error:") and "nope" in err[0]


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        write_report(tmp_path / "missing")
    with pytest.raises(ReportError, match="neither config.toml nor stages"):
        RunDirectory(tmp_path)


def test_figure_code_lives_in_the_report_only():
    """No pipeline stage draws: the report makes every figure from the run's files."""
    offenders = [str(p.relative_to(PKG)) for p in (PKG / "pipeline").rglob("*.py") if "matplotlib" in p.read_text()]
    assert not offenders, offenders
    text = "\n".join(p.read_text() for p in (PKG / "report").glob("*.py"))
    assert "import pyplot" not in text and "matplotlib.pyplot" not in text  # Figure objects on Agg canvases only
