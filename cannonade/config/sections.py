"""The run configuration as frozen dataclasses: one class per TOML section.

Each field's type is what the loader checks (``Literal`` choices, ``Path`` resolved against the
config file's folder, tuples from TOML lists) and its ``metadata['doc']`` is its documentation.
The documented example is ``cannonade/data/example_lamost_galah.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# Wheeler+2020 §2.2 label sets (defaults). "mean_alpha_fe" and "mean_s_fe" are derived labels.
DWARF_LABELS = ("teff", "logg", "vmic", "fe_h", "o_fe", "eu_fe", "mean_alpha_fe", "sc_fe", "mean_s_fe")
GIANT_LABELS = ("teff", "logg", "vmic", "fe_h", "o_fe", "eu_fe", "mg_fe", "al_fe", "mn_fe", "ba_fe")


def doc(text, required=False, **extra):
    """Field metadata: documentation, and whether the key must be given."""
    return {"doc": text, "required": required, **extra}


@dataclass(frozen=True)
class RunSection:
    out: Path = field(default=Path("run"), metadata=doc("run directory (relative to the config file)"))
    seed: int = field(default=0, metadata=doc("seed for cross-validation folds and Monte-Carlo resamples"))
    chunk_size: int = field(default=2000, metadata=doc("spectra per inference chunk (resume granularity)", minimum=1))
    workers: int = field(default=2, metadata=doc("processes for ingest, reading reference spectra and the orbits of dynamics; the dask workers with run.scheduler = 'local'", minimum=1))
    scheduler: str = field(default="", metadata=doc("where the chunked stages (ingest, infer, dynamics) run: '' = processes for ingest and dynamics, "
                                                     "in-process inference; 'local' = a dask LocalCluster of run.workers "
                                                     "processes; tcp://HOST:PORT or a scheduler file = a running dask "
                                                     "cluster (docs/scale.md); results do not depend on it"))
    device: Literal["cpu", "gpu"] = field(default="cpu", metadata=doc("where the Cannon's training and the chi2 reduction of "
                                                                      "inference run: 'cpu' (NumPy) or 'gpu' (a CUDA GPU "
                                                                      "through CuPy, float64; pip install 'cannonade[gpu]'; "
                                                                      "docs/scale.md); results agree to rounding"))


@dataclass(frozen=True)
class TargetSection:
    spectra: Path = field(default=None, metadata=doc("directory of target spectra, or a list file (one path a line; '@' prefix optional)", required=True))
    catalogue: Path = field(default=None, metadata=doc("target survey catalogue (FITS/CSV/Parquet)", required=True))
    survey: str = field(default="lamost", metadata=doc("survey whose spectra get labels"))
    id_column: str = field(default="obsid", metadata=doc("unique id of one observation"))
    star_column: str = field(default="designation", metadata=doc("id shared by repeat observations of one star"))
    file_column: str = field(default="filename", metadata=doc("spectrum file name of each observation"))
    redshift_column: str = field(default="z", metadata=doc("redshift used for the rest-frame correction ('' to use the file's)"))
    snr_column: str = field(default="snrz", metadata=doc("S/N used for cuts and to weight repeat visits"))
    teff_column: str = field(default="teff", metadata=doc("target-pipeline Teff for the dwarf/giant split"))
    logg_column: str = field(default="logg", metadata=doc("target-pipeline log g for the dwarf/giant split"))
    ra_column: str = field(default="ra", metadata=doc("right ascension [deg]"))
    dec_column: str = field(default="dec", metadata=doc("declination [deg]"))
    error_prefix: str = field(default="e_", metadata=doc("label error columns are <error_prefix><label> (recipe nandakumar2022)"))
    columns: dict[str, str] = field(default_factory=dict, metadata=doc("aliases: name used in cuts/labels -> this catalogue's column"))
    grid: str = field(default="lamost", metadata=doc("common wavelength grid: lamost | apogee | galah | WMIN:WMAX:NPIX"))
    normalise: Literal["gaussian", "chebyshev"] = field(default="gaussian", metadata=doc("continuum normalisation"))


@dataclass(frozen=True)
class ReferenceSection:
    catalogue: Path = field(default=None, metadata=doc("reference survey catalogue", required=True))
    survey: str = field(default="galah", metadata=doc("survey providing the training labels"))
    spectra: Path | None = field(default=None, metadata=doc("reference survey spectra (for windowed-chi2 cleaning); '' to skip cleaning"))
    id_column: str = field(default="sobject_id", metadata=doc("reference star id (names its spectrum files)"))
    ra_column: str = field(default="ra", metadata=doc("right ascension [deg]"))
    dec_column: str = field(default="dec", metadata=doc("declination [deg]"))
    error_prefix: str = field(default="e_", metadata=doc("label error columns are <error_prefix><label>"))
    columns: dict[str, str] = field(default_factory=dict, metadata=doc("aliases: name used in cuts/labels -> this catalogue's column"))
    grid: str = field(default="galah", metadata=doc("common grid of the reference spectra when they get labels too (recipe nandakumar2022)"))
    normalise: Literal["gaussian", "chebyshev", "none"] = field(default="chebyshev", metadata=doc("their continuum normalisation (recipe nandakumar2022)"))


@dataclass(frozen=True)
class CrossmatchSection:
    method: Literal["sky", "id"] = field(default="sky", metadata=doc("sky (radius on the sky) or id (a target column holds the reference id)"))
    radius_arcsec: float = field(default=1.0, metadata=doc("sky-match radius [arcsec]", positive=True))
    target_id_column: str = field(default="", metadata=doc("for method = id: target column holding the reference id"))
    reference_id_column: str = field(default="", metadata=doc("for method = id: the reference column it is compared with ('' = reference.id_column)"))


@dataclass(frozen=True)
class CutsSection:
    target: tuple[str, ...] = field(default=("snrz >= 30",), metadata=doc("expressions over target-catalogue columns (Wheeler+2020 §2.1)"))
    reference: tuple[str, ...] = field(
        default=("snr_c1 >= 30", "chi2_cannon < 4", "flag_cannon == 0"),
        metadata=doc("expressions over reference-catalogue columns (names may be aliases)"),
    )


@dataclass(frozen=True)
class CleanSection:
    enabled: bool = field(default=True, metadata=doc("windowed-chi2 cleaning of the reference set (Wheeler+2020 §2.1)"))
    percentile: float = field(default=85.0, metadata=doc("drop stars above this percentile for any element, in (0, 100]"))
    windows: Path | None = field(default=None, metadata=doc("CSV of element line windows ('' = shipped Wheeler+2020 Table 2)"))
    labels: tuple[str, ...] = field(default=("teff", "logg", "vmic", "fe_h"), metadata=doc("stellar labels of the reference-spectra model"))
    order: int = field(default=2, metadata=doc("polynomial order in the stellar labels", minimum=1))


@dataclass(frozen=True)
class SplitSection:
    method: Literal["wheeler2020", "none"] = field(default="wheeler2020", metadata=doc("wheeler2020 (Eq. 1: dwarf and giant models) | none (one model)"))


@dataclass(frozen=True)
class DerivedLabel:
    mean_of: tuple[str, ...] = field(default=None, metadata=doc("component labels", required=True))
    weights: Literal["error", "equal"] = field(default="error", metadata=doc("inverse-variance or equal weights"))


@dataclass(frozen=True)
class LabelsSection:
    derived: dict[str, DerivedLabel] = field(
        default_factory=lambda: {
            "mean_alpha_fe": DerivedLabel(("mg_fe", "si_fe", "ca_fe", "ti_fe")),
            "mean_s_fe": DerivedLabel(("ba_fe", "y_fe")),
        },
        metadata=doc("derived labels: name -> {mean_of = [...], weights = 'error' | 'equal'}"),
    )


@dataclass(frozen=True)
class ModelSpec:
    labels: tuple[str, ...] = field(default=None, metadata=doc("labels of this model", required=True))


@dataclass(frozen=True)
class TrainingSection:
    order: int = field(default=2, metadata=doc("polynomial order", minimum=1))
    scale: Literal["standard", "percentile"] = field(default="standard", metadata=doc("label scaling (percentile: Nandakumar+2022 Eq. 2)"))
    scatter: Literal["reml", "ml"] = field(default="reml", metadata=doc("reml | ml (Wheeler+2020 Eq. 5 as written)"))
    regularization: float = field(default=0.0, metadata=doc("L1 strength", minimum=0))
    cv_folds: int = field(default=12, metadata=doc("cross-validation folds", minimum=2))
    min_stars: int = field(default=50, metadata=doc("refuse to train a model on fewer stars", minimum=1))


@dataclass(frozen=True)
class CalibrationSection:
    enabled: bool = field(default=True, metadata=doc("calibrate each model's errors and flags from its CV and the target's repeat visits"))
    error_model: Literal["floor", "nandakumar"] = field(
        default="floor", metadata=doc("floor: sqrt((a σ)² + b²); nandakumar: max(f σ, precision(S/N)) (Nandakumar+2022 §3.7)"))
    repeat_stars: int = field(default=2000, metadata=doc("at most this many target stars with repeat visits calibrate each model (0: none)", minimum=0))
    distance_threshold: float = field(default=0.0, metadata=doc("training-distance flag threshold (Nandakumar+2022 Eq. 5); 0 = 2 x number of distance labels", minimum=0))
    low_snr: float = field(default=20.0, metadata=doc("spectra below this S/N get the LOW_SNR flag", minimum=0))
    max_missing_fraction: float = field(default=0.2, metadata=doc("spectra with more missing pixels than this get the MISSING_PIXELS flag", minimum=0))
    window_chi2_factor: float = field(default=5.0, metadata=doc("HIGH_WINDOW_CHI2 where a label's windowed reduced chi2 exceeds this x its model's median", positive=True))


@dataclass(frozen=True)
class DynamicsSection:
    enabled: bool = field(default=True, metadata=doc("Gaia cross-match, Galactocentric coordinates and actions"))
    gaia: Path | None = field(default=None, metadata=doc("Gaia catalogue ('' disables the stage)"))
    radius_arcsec: float = field(default=1.0, metadata=doc("Gaia match radius [arcsec]", positive=True))
    n_samples: int = field(default=20, metadata=doc("Monte-Carlo resamples (Wheeler+2020 §5.1)", minimum=1))
    rv_column: str = field(default="rv", metadata=doc("target-catalogue RV used for the dynamics, Gaia's where it is missing (its error: <rv_column>_err)"))
    action_method: Literal["staeckel", "staeckel_grid"] = field(
        default="staeckel", metadata=doc("staeckel: galpy's Stäckel fudge for every orbit (Wheeler+2020 §5.1); staeckel_grid: galpy's "
                                         "interpolated Stäckel grid where it is reliable (disc orbits), the fudge elsewhere: "
                                         "5x (10% halo) to 15x (disc) faster orbits; J_R as the fudge's, J_z to ~0.6% (docs/catalogue.md)"))


@dataclass(frozen=True)
class CatalogueSection:
    formats: tuple[Literal["fits", "parquet", "hats"], ...] = field(
        default=("fits", "parquet"),
        metadata=doc("fits and/or parquet; add hats for the per-star catalogue as a HATS catalogue, catalogue/per_star_hats/ "
                     "(HEALPix-partitioned Parquet for LSDB; pip install cannonade[hats])"))


@dataclass(frozen=True)
class ScalingSection:
    """The Nandakumar+2022 cross-survey scaling (recipe = "nandakumar2022")."""

    labels: tuple[str, ...] = field(default=("teff", "logg", "fe_h", "alpha_fe", "vmic", "vbroad"),
                                    metadata=doc("labels of the four models (names as aliased in target.columns / reference.columns)"))
    censor: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"alpha_fe": ("Si", "Mg", "Ti", "Ca")},
                                               metadata=doc("label -> elements in whose line windows it may act (Nandakumar+2022 Sec. 3.3)"))
    target_windows: Path | None = field(default=None, metadata=doc("line windows of the target survey's spectra ('' = shipped for its survey)"))
    reference_windows: Path | None = field(default=None, metadata=doc("line windows of the reference survey's spectra ('' = shipped for its survey)"))
    missing_labels: Literal["impute", "drop"] = field(default="impute", metadata=doc("training stars with a missing reference label: impute it from the spectrum, or drop the star"))
    refine_labels: int = field(default=0, metadata=doc("rounds of refining each survey's training labels by the training spectra of both surveys "
                                                      "(cross-validated predictions and catalogue values, inverse-variance weighted; "
                                                      "cannonade.cannon.refinement; not in the paper): 0 = the paper's catalogue labels", minimum=0))
    refine_folds: int = field(default=4, metadata=doc("cross-validation folds of each refining round", minimum=2))
    giant_logg: float = field(default=3.5, metadata=doc("giants have reference log g below this in tables/systematics.csv (Nandakumar+2022 Sec. 3.2)"))
    clusters: Path | None = field(default=None, metadata=doc("cluster member list ('ID logg cluster' lines, or a table with id and cluster columns); '' skips the cluster table"))
    target_spectra_flag: str = field(default="STARFLAG", metadata=doc("target column copied to flag_spectra ('' = none)"))
    target_survey_flag: str = field(default="ASPCAPFLAG", metadata=doc("target column copied to flag_sp_aspcap ('' = none)"))
    reference_spectra_flag: str = field(default="", metadata=doc("reference column copied to flag_spectra ('' = none)"))
    reference_survey_flag: str = field(default="flag_sp", metadata=doc("reference column copied to flag_sp_aspcap ('' = none)"))
    reference_snr_column: str = field(default="snr_c2_iraf", metadata=doc("reference S/N copied to the catalogues' snr"))
    reference_star_column: str = field(default="star_id", metadata=doc("reference column of the id both surveys share (GALAH star_id = 2MASS; target: target.star_column)"))
    target_visits: bool = field(default=True, metadata=doc("calibrate the target-spectra models on the visits inside the target's files (APOGEE apStar), up to calibration.repeat_stars stars"))
    reference_visits: Path | None = field(default=None, metadata=doc("per-exposure reference catalogue (GALAH allspec: reference.id_column and reference_star_column) whose repeat exposures in the store calibrate the reference-spectra models ('' = none)"))


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (see :func:`cannonade.config.load_config`)."""

    target: TargetSection = field(metadata=doc("the survey whose spectra get labels", required=True))
    reference: ReferenceSection = field(metadata=doc("the survey providing training labels", required=True))
    run: RunSection = field(default_factory=RunSection, metadata=doc("run directory and execution"))
    crossmatch: CrossmatchSection = field(default_factory=CrossmatchSection, metadata=doc("reference x target match"))
    cuts: CutsSection = field(default_factory=CutsSection, metadata=doc("quality cuts"))
    clean: CleanSection = field(default_factory=CleanSection, metadata=doc("windowed-chi2 cleaning"))
    split: SplitSection = field(default_factory=SplitSection, metadata=doc("dwarf/giant split"))
    labels: LabelsSection = field(default_factory=LabelsSection, metadata=doc("derived labels"))
    models: dict[str, ModelSpec] = field(
        default_factory=lambda: {"dwarf": ModelSpec(DWARF_LABELS), "giant": ModelSpec(GIANT_LABELS)},
        metadata=doc("labels of each model: [models.NAME] labels = [...]"),
    )
    training: TrainingSection = field(default_factory=TrainingSection, metadata=doc("Cannon training and CV"))
    calibration: CalibrationSection = field(default_factory=CalibrationSection, metadata=doc("per-star errors and flags"))
    dynamics: DynamicsSection = field(default_factory=DynamicsSection, metadata=doc("Gaia match and orbits"))
    catalogue: CatalogueSection = field(default_factory=CatalogueSection, metadata=doc("output formats"))
    recipe: Literal["wheeler2020", "nandakumar2022"] = field(default="wheeler2020", metadata=doc("wheeler2020: one survey labelled by another; nandakumar2022: two surveys put on each other's scale"))
    scaling: ScalingSection = field(default_factory=ScalingSection, metadata=doc("cross-survey scaling (recipe = nandakumar2022)"))
    source: Path | None = field(default=None, metadata=doc("the file this config was read from", internal=True))

    @property
    def model_labels(self):
        """dict model name -> tuple of label names."""
        return {name: spec.labels for name, spec in self.models.items()}
