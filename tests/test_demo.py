"""`cannonade demo`: the Cannon core on in-memory mock spectra (--quick), and the full demo's handling of the mock's files."""

import numpy as np
import pytest

from cannonade.demo import quick_demo


def test_quick_demo_reports_calibrated_errors_near_the_cv_scatter():
    table, summary, converged = quick_demo(seed=0)
    assert converged > 0.95 and "training stars" in summary
    e, raw, scatter = (np.asarray(table[c], float) for c in ("median_error", "median_formal_error", "cv_scatter"))
    assert np.all(e > 2 * raw)  # the formal errors miss the model mismatch
    assert np.all((e > 0.5 * scatter) & (e < 2.0 * scatter))  # calibrated errors are on the CV's scale


def test_demo_deletes_the_mock_spectra_and_a_rerun_does_not_simulate_again(tmp_path, monkeypatch, capsys):
    """keep_mock=False: spectra go after the run, catalogues and truth stay; the rerun of a finished
    run reuses the mock; an unfinished run that needs the spectra gets the same mock again."""
    import json
    from types import SimpleNamespace

    import cannonade.demo as demo
    import cannonade.simulate as simulate
    from cannonade.pipeline import STAGES

    calls = {"simulate": 0, "pipeline": 0}
    real_simulate = simulate.simulate_survey

    def counting_simulate(*args, **kwargs):
        calls["simulate"] += 1
        return real_simulate(*args, **kwargs)

    def fake_pipeline(config):  # the real stages are tested in tests/pipeline; here: which files exist when
        calls["pipeline"] += 1
        run = tmp_path / "run"
        mock = tmp_path / "mock"
        for stage, folder in (("ingest", "lamost/spectra"), ("clean", "galah/spectra")):
            if not (run / "stages" / f"{stage}.json").is_file():
                assert any((mock / folder).glob("*.fits.gz")), f"{stage} needs {folder}"
        (run / "stages").mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            (run / "stages" / f"{stage}.json").write_text("{}")
        return SimpleNamespace(out=run)

    monkeypatch.setattr(simulate, "simulate_survey", counting_simulate)
    monkeypatch.setattr("cannonade.pipeline.run_pipeline", fake_pipeline)
    monkeypatch.setattr(demo, "truth_comparison", lambda run_dir, mock_dir: "table")
    mock = tmp_path / "mock"
    spectra = (mock / "lamost" / "spectra", mock / "galah" / "spectra")

    demo.run_demo(tmp_path, n_stars=120, reference_fraction=0.1)
    out = capsys.readouterr().out
    assert calls == {"simulate": 1, "pipeline": 1}
    assert out.startswith("disk: this demo needs about") and "with --keep-mock" in out and "removed the mock's spectrum files" in out
    assert not any(d.exists() for d in spectra)
    for kept in ("manifest.json", "truth/stars.fits", "truth/observations.fits", "lamost/catalogue.fits", "galah/catalogue.fits",
                 "gaia/catalogue.fits"):
        assert (mock / kept).is_file(), kept
    assert json.loads((tmp_path / "mock.json").read_text())["files"] == "fits.gz"
    assert f"disk: {demo.disk_use(tmp_path) / 1e9:.2f} GB" in out

    demo.run_demo(tmp_path, n_stars=120, reference_fraction=0.1)  # finished: nothing simulated again
    assert calls == {"simulate": 1, "pipeline": 2}

    (tmp_path / "run" / "stages" / "clean.json").unlink()  # unfinished before clean: the spectra are needed again
    demo.run_demo(tmp_path, n_stars=120, reference_fraction=0.1, keep_mock=True)
    assert calls == {"simulate": 2, "pipeline": 3}
    assert all(any(d.glob("*.fits.gz")) for d in spectra)  # kept
    assert "the mock's spectra kept" in capsys.readouterr().out

    # a mock from before gzipped files (old stamp) is not reused, and its run is discarded
    stamp = json.loads((tmp_path / "mock.json").read_text())
    del stamp["files"]
    (tmp_path / "mock.json").write_text(json.dumps(stamp))
    (tmp_path / "run" / "stages" / "old_marker.json").write_text("{}")
    demo.run_demo(tmp_path, n_stars=120, reference_fraction=0.1)
    assert calls == {"simulate": 3, "pipeline": 4} and not (tmp_path / "run" / "stages" / "old_marker.json").exists()


def test_disk_estimate_scales_with_the_stars():
    from cannonade.demo import estimate_disk_use

    small, big = estimate_disk_use(3000), estimate_disk_use(30000)
    assert big["peak"] == pytest.approx(10 * small["peak"])
    assert big["final"] < big["final_keep_mock"] == big["peak"]
