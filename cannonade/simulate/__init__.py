"""Mock surveys: a seeded, simulated Milky Way observed by LAMOST, GALAH, APOGEE and Gaia.

In memory::

    from cannonade.simulate import simulate_population, synthesize
    stars = simulate_population(1000, seed=1)             # astropy Table of true labels
    syn = synthesize(stars, "lamost", snr=50, seed=2)     # .wavelength .flux .ivar .normalised_flux

On disk, in the real file layouts (``cannonade simulate`` on the command line)::

    from cannonade.simulate import simulate_survey
    simulate_survey("lamost-galah", n_stars=500, seed=0, out="mock")
    simulate_survey("lamost-galah", 500, 0, "mock_ideal", realism=False)  # without the Realism effects
    simulate_survey("apogee-galah", n_stars=4000, seed=0, out="mock_ap")  # Nandakumar+2022: APOGEE x GALAH

See ``docs/simulate.md`` for the model, the file layout and the truth tables.
"""

from __future__ import annotations

from cannonade.simulate.catalogues import CORRUPTION_KINDS, edsd_distance, twomass_id
from cannonade.simulate.instruments import INSTRUMENTS, Instrument, get_instrument
from cannonade.simulate.population import NAMED_CLUSTERS, NamedCluster, simulate_population
from cannonade.simulate.realism import Realism
from cannonade.simulate.spectra import (
    ABUNDANCE_ELEMENTS,
    Synthetic,
    equivalent_widths,
    line_list,
    normalised_model,
    synthesize,
    synthesize_normalised,
)
from cannonade.simulate.survey import PRESETS, simulate_survey
from cannonade.simulate.systematics import NANDAKUMAR_TABLE1, SurveySystematics
from cannonade.simulate.writers import SimulationWriteError

__all__ = [
    "simulate_survey",
    "cli_simulate",
    "simulate_population",
    "Realism",
    "SurveySystematics",
    "NANDAKUMAR_TABLE1",
    "NamedCluster",
    "NAMED_CLUSTERS",
    "synthesize",
    "synthesize_normalised",
    "normalised_model",
    "equivalent_widths",
    "line_list",
    "Synthetic",
    "Instrument",
    "INSTRUMENTS",
    "get_instrument",
    "ABUNDANCE_ELEMENTS",
    "CORRUPTION_KINDS",
    "PRESETS",
    "SimulationWriteError",
    "edsd_distance",
    "twomass_id",
]
