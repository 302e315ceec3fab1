"""The typed run configuration and the restricted cut-expression parser."""

from pathlib import Path

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table

from cannonade import ConfigError
from cannonade.config import RunConfig, as_toml_dict, config_from_dict, evaluate_cut, load_config

MINIMAL = '[target]\nspectra = "s"\ncatalogue = "c.fits"\n[reference]\ncatalogue = "r.fits"\n'


def test_sections_are_typed_and_paths_resolved(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL + '[training]\nregularization = 1\n[dynamics]\ngaia = ""\n')
    cfg = load_config(p)
    assert isinstance(cfg, RunConfig)
    assert cfg.target.catalogue == (tmp_path / "c.fits").resolve() and isinstance(cfg.run.out, Path)
    assert cfg.training.regularization == 1.0 and isinstance(cfg.training.regularization, float)
    assert cfg.dynamics.gaia is None and cfg.reference.spectra is None
    assert cfg.models["dwarf"].labels[0] == "teff" and cfg.source == p.resolve()
    with pytest.raises(Exception):  # frozen
        cfg.run.seed = 3


def test_config_validation_messages(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL + '[training]\norder = "two"\n')
    with pytest.raises(ConfigError, match="training.order must be int"):
        load_config(p)
    p.write_text('[target]\nspectra = "s"\n[reference]\ncatalogue = "r.fits"\n')
    with pytest.raises(ConfigError, match="missing required key target.catalogue"):
        load_config(p)
    p.write_text(MINIMAL + "[cuts]\ntarget = [\"__import__('os')\"]\n")
    with pytest.raises(ConfigError, match="cuts.target"):
        load_config(p)
    p.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    p.write_text(MINIMAL + '[training]\nscale = "percentil"\n')
    with pytest.raises(ConfigError, match="training.scale must be one of.*did you mean 'percentile'"):
        load_config(p)
    p.write_text(MINIMAL + "[run]\nchunk_size = 0\n")
    with pytest.raises(ConfigError, match="run.chunk_size must be >= 1"):
        load_config(p)
    p.write_text(MINIMAL + "[training]\nregularization = -0.5\n")
    with pytest.raises(ConfigError, match="training.regularization must be >= 0"):
        load_config(p)
    p.write_text(MINIMAL + '[dynamics]\naction_method = "grid"\n')
    with pytest.raises(ConfigError, match=r"dynamics.action_method must be one of \['staeckel', 'staeckel_grid'\], got 'grid'"):
        load_config(p)
    p.write_text(MINIMAL + '[dynamics]\naction_method = "staeckel_grid"\n')
    assert load_config(p).dynamics.action_method == "staeckel_grid"
    assert RunConfig.__dataclass_fields__["dynamics"].default_factory().action_method == "staeckel"  # the paper's by default


def test_clean_normalise_is_not_a_silent_key(tmp_path):
    """It was validated and never read; now it is refused like any unknown key."""
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL + '[clean]\nnormalise = "gaussian"\n')
    with pytest.raises(ConfigError, match="unknown key clean.'normalise'"):
        load_config(p)


def test_a_dict_is_validated_like_a_file(tmp_path):
    from cannonade.pipeline import Run

    raw = {"target": {"spectra": "s", "catalogue": "c.fits"}, "reference": {"catalogue": "r.fits"}, "training": {"cv_folds": "12"}}
    with pytest.raises(ConfigError, match="training.cv_folds must be int"):
        Run(raw)
    raw["training"] = {"cv_fold": 12}
    with pytest.raises(ConfigError, match="did you mean 'cv_folds'"):
        config_from_dict(raw)


def test_round_trip_through_plain_data(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(MINIMAL)
    cfg = load_config(p)
    again = config_from_dict(as_toml_dict(cfg), tmp_path)
    assert again.target == cfg.target and again.models == cfg.models and again.labels == cfg.labels


def test_cut_expressions():
    t = Table(dict(snr_c1_iraf=[10.0, 40, np.nan, 50], chi2_sp=[1.0, 2, 3, 5], flag_sp=[0, 0, 0, 1]))
    al = {"snr_c1": "snr_c1_iraf", "chi2_cannon": "chi2_sp"}
    assert evaluate_cut("snr_c1 >= 30", t, al).tolist() == [False, True, False, True]
    assert evaluate_cut("(chi2_cannon < 4) & (flag_sp == 0)", t, al).tolist() == [True, True, True, False]
    assert evaluate_cut("abs(chi2_sp - 2) <= 1 and not flag_sp", t).tolist() == [True, True, True, False]


def test_bitmask_cuts_are_bitwise():
    """Nandakumar+2022 §3.2: ASPCAPFLAG without bits 16-20, 23; STARFLAG bits reject spectra."""
    bits = sum(1 << b for b in (16, 17, 18, 19, 20, 23))
    t = Table(dict(ASPCAPFLAG=np.array([0, 1 << 16, 1 << 23, 1 << 5, (1 << 5) | (1 << 19)], dtype=np.int64),
                   STARFLAG=np.array([0, 0, 1 << 3, 1 << 1, 0], dtype=np.int64)))
    assert evaluate_cut(f"(ASPCAPFLAG & {bits}) == 0", t).tolist() == [True, False, False, True, False]
    assert evaluate_cut("(STARFLAG & 8) == 0", t).tolist() == [True, True, False, True, True]
    assert evaluate_cut("((ASPCAPFLAG >> 5) & 1) == 1", t).tolist() == [False, False, False, True, True]
    assert evaluate_cut("(STARFLAG | ASPCAPFLAG) == 0", t).tolist() == [True, False, False, False, False]
    assert evaluate_cut("~(STARFLAG == 0)", t).tolist() == [False, False, True, True, False]
    with pytest.raises(ConfigError, match="bitwise.*integer"):
        evaluate_cut("(snr & 1) == 0", Table(dict(snr=[1.5, 2.0])))


@pytest.mark.parametrize("expr", ["snr.real > 1", "snr[0] > 1", "__class__ == 1", "open('x')", "lambda: 1",
                                  "[s for s in snr]", "snr > 'a'", "getattr(snr, 'x')", "abs(x=snr)"])
def test_unsafe_expressions_are_refused(expr):
    with pytest.raises(ConfigError):
        evaluate_cut(expr, Table(dict(snr=[1.0])))


def test_masked_cells_and_sentinels_never_pass():
    t = Table(dict(teff=MaskedColumn([5000.0, 5100.0, -9999.0], mask=[False, True, False]),
                   flag=MaskedColumn([0, 0, 0], mask=[False, False, True])))
    assert evaluate_cut("teff > 0", t).tolist() == [True, False, False]
    assert evaluate_cut("flag == 0", t).tolist() == [True, True, False]
