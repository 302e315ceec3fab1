"""The run report: figures and an HTML page made from a finished run directory (``cannonade report RUN_DIR``).

* :mod:`~cannonade.report.build`: :func:`write_report` — ``RUN_DIR/report/index.html``, the
  figures beside it, ``summary.json``;
* :mod:`~cannonade.report.rundir`: :class:`RunDirectory`, the run's files read on demand (the
  report reads nothing else);
* :mod:`~cannonade.report.figures_model`: cross-validation, precision, θ and s, model versus
  data, residuals, error calibration, flag rates, Kiel diagram;
* :mod:`~cannonade.report.figures_science`: wide-binary chemical distances, mean-label maps,
  abundance planes;
* :mod:`~cannonade.report.html`: the page (plain HTML, inline CSS, escaped text);
* :mod:`~cannonade.report.style`, :mod:`~cannonade.report.inputs`: figure conventions and
  input checks.

See docs/report.md.
"""

from cannonade.report.build import INDEX_FILE, REPORT_DIR, SUMMARY_FILE, write_report
from cannonade.report.inputs import ReportError, ReportInputError
from cannonade.report.rundir import RunDirectory, read_run

__all__ = ["write_report", "RunDirectory", "read_run", "ReportError", "ReportInputError", "REPORT_DIR", "INDEX_FILE",
           "SUMMARY_FILE"]
