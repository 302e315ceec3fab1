"""Stage ``ingest_reference`` (Nandakumar+2022): the reference survey's spectra -> ``reference.h5``.

Both surveys' spectra get labels in the cross-survey recipe, so the reference survey has a
store of its own, on its own grid. GALAH's four CCDs of a star are joined into one row
(``join = "auto"``: one row per star on the galah grid; a star missing a CCD is reported,
as Nandakumar+2022 §2.2 removed such stars).
"""

from __future__ import annotations

from cannonade.exceptions import ConfigError
from cannonade.spectra.ingest import ingest

NAME = "ingest_reference"
WORK_DIRS = ("reference.h5.parts",)
CONFIG = ("recipe", "reference.spectra", "reference.grid", "reference.normalise")
INPUTS = ("reference.spectra",)


def execute(run):
    r = run.cfg.reference
    if not r.spectra:
        raise ConfigError("reference.spectra is required by the nandakumar2022 recipe (its spectra get labels too)")
    rep = ingest([str(r.spectra)], run.path("reference.h5"), grid=r.grid, normalise=r.normalise, join="auto",
                 workers=run.cfg.run.workers, chunk_size=max(100, min(1000, run.cfg.run.chunk_size)),
                 stop_after=run.stop_after_chunks, scheduler=run.cfg.run.scheduler)
    run.log.info("[ingest_reference] %d %s spectra stored (%s), %d unreadable (report: %s)", rep.n_ok, r.survey,
                 "one row per star" if rep.join == "star" else "one row per file", rep.n_failed, rep.error_report)
    if rep.n_ok == 0:
        raise ConfigError(f"no reference spectrum could be read from {r.spectra} (see {rep.error_report})")
    return {"n_stored": rep.n_ok, "n_failed": rep.n_failed, "join": rep.join}
