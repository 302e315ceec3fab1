"""Kill `cannonade run` anywhere, resume: the catalogue of an uninterrupted run, every time (issue 16).

One run directory is interrupted 27 times at seeded random points of every stage, each rerun
resuming it: 23 SIGKILLs by the driver of ``_pipeline_faults.py`` at an atomic write of a stage
(before the rename, with the temporary file cut in half as if killed while writing it, or just
after the rename), at the store assembly's removal of a copied ``ingest`` part, or right after a
finished chunk of ``ingest`` / ``infer``; two stops by the runner's deterministic hook; and two
SIGKILLs of a real ``python -m cannonade run`` at a random time inside ``clean`` and ``train``.
After each interruption no file where a finished one is expected is partial (every file but the
hidden temporaries reads completely; every stage with a marker has all its outputs), and the
rerun never redoes a chunk whose part was finished. The final rerun gives the catalogue (FITS and
Parquet, per star and per observation) and the models of the uninterrupted run, exactly.
"""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow

CHUNKED = ("ingest", "infer")
# the stages killed twice at an atomic write (clean and train are the slow ones: once each, and a
# real `cannonade run` is killed inside each)
TWICE = ("crossmatch", "cuts", "split", "labels", "combine", "dynamics", "catalogue")
# (stage after whose end the CLI is killed, the longest random delay in seconds)
CLI_KILLS = {"cuts": 1.5, "labels": 3.0}


def stage_writes(events, ops=("write",)):
    """stage -> the run-directory paths it wrote (or the parts it removed), in order; its marker last."""
    out = {}
    for e in events:
        if e["ev"] in ops and e["stage"]:
            out.setdefault(e["stage"], []).append((e["ev"], e["path"]) if len(ops) > 1 else e["path"])
    return out


def stage_outputs(run_dir, events):
    """stage -> the files it wrote that a finished run keeps (not the consumed ingest parts)."""
    return {s: sorted({p for p in paths if (run_dir / p).is_file()}) for s, paths in stage_writes(events).items()}


def next_stage_seconds(ref_dir, stages):
    """stage -> the seconds the stage after it took in the uninterrupted run (its marker's record)."""
    out = {}
    for s, nxt in zip(stages, stages[1:]):
        out[s] = float(json.loads((ref_dir / "stages" / f"{nxt}.json").read_text())["seconds"])
    return out


def kill_plan(stages, points, seed=2016, next_seconds=None):
    """The interruptions, in pipeline order: dicts for the driver, or ``{"cli": STAGE, "delay": s}``.

    ``next_seconds`` (stage -> how long the next stage took in the uninterrupted run) bounds a CLI
    kill's delay to half of it, so that the kill lands inside the next stage on a fast machine too
    (a kill after it would let the run finish chunks of ``infer`` that the plan stops and kills later).

    ``points``: stage -> its (op, path) of the uninterrupted run, writes and part removals. A
    chunked stage is stopped by the hook, killed at the write of a part, killed after a finished
    chunk, then killed at random among its later points (for ``ingest`` once at the store's
    assembly removing a copied part, once at the error report, the store or the marker; for
    ``infer`` at the last part or the marker). Every other
    stage is killed at one or two random points of its own. How (before the rename, a half-written
    temporary, after the rename) is random too.
    """
    rng = np.random.default_rng(seed)
    hows = ["before", "partial", "after"]
    plan = []

    def kill(stage, op, path, how):
        plan.append({"kill": {"stage": stage, "op": op, "path": path, "how": how}})

    for stage in stages:
        pts = points[stage]
        if stage in CHUNKED:
            parts = [p for op, p in pts if op == "write" and "/part_" in p]
            plan.append({"stop_after_chunks": len(parts) // 2})
            kill(stage, "write", parts[len(parts) // 2], str(rng.choice(hows)))
            plan.append({"kill_after_chunks": 1})
            later = pts[pts.index(("write", parts[-1])) + (stage == "ingest"):]
            # the store's assembly removes each part once copied: one kill there, one after it
            groups = [[pt for pt in later if pt[0] == "unlink"], [pt for pt in later if pt[0] != "unlink"]]
            for group in [g for g in groups if g]:
                kill(stage, *group[rng.integers(len(group))], str(rng.choice(hows)))
            continue
        picks = sorted(rng.choice(len(pts), size=2 if stage in TWICE else 1, replace=False))
        for i, k in enumerate(picks):
            how = str(rng.choice(hows))
            if how == "after" and k == len(pts) - 1 and i < len(picks) - 1:
                how = "before"  # the marker renamed: the stage would be finished before its next kill
            kill(stage, *pts[k], how)
        if stage in CLI_KILLS:
            longest = CLI_KILLS[stage]
            if next_seconds and stage in next_seconds:
                longest = min(longest, 0.5 * next_seconds[stage])
            plan.append({"cli": stage, "delay": float(rng.uniform(0, longest))})
    return plan


def kill_cli(cfg, run_dir, after_stage, delay, timeout=300):
    """Start ``python -m cannonade run CFG``; SIGKILL it ``delay`` s after the run log says ``after_stage``
    is done (or skipped). Returns its exit status (-9 when killed)."""
    logf = run_dir / "run.log"
    offset = logf.stat().st_size if logf.exists() else 0
    env = {**os.environ, "CANNONADE_QUIET": "1", "PYTHONHASHSEED": "777"}
    proc = subprocess.Popen([sys.executable, "-m", "cannonade", "run", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    seen = re.compile(rf"\[{after_stage}\] (done in|already done)")
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if logf.exists():
                with open(logf, encoding="utf-8", errors="replace") as fh:
                    fh.seek(offset)
                    if seen.search(fh.read()):
                        break
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode in (-9, 0), err[-3000:]
    return proc.returncode


def first_unfinished(run_dir, stages):
    return next((s for s in stages if not (run_dir / "stages" / f"{s}.json").is_file()), None)


def test_every_write_is_atomic_and_inside_the_run_directory(reference_run):
    """The uninterrupted run: each stage writes through atomic_path, only inside run.out."""
    ref_dir, events = reference_run
    writes = [e for e in events if e["ev"] == "write"]
    assert writes and all(e["inside"] for e in writes), [e["path"] for e in writes if not e["inside"]]
    stages = [e["stage"] for e in events if e["ev"] == "stage"]
    by_stage = stage_writes(events)
    assert all(by_stage[s][-1] == f"stages/{s}.json" for s in stages)  # the marker is each stage's last write
    written = {e["path"] for e in writes}
    on_disk = {p.relative_to(ref_dir).as_posix() for p in ref_dir.rglob("*") if p.is_file() and p.name != "run.log"}
    assert on_disk <= written, sorted(on_disk - written)  # no file of the run directory was written in place


def test_kill_anywhere_and_resume_gives_the_uninterrupted_catalogue(faults, pipeline_mock, reference_run, tmp_path):
    ref_dir, ref_events = reference_run
    stages = [e["stage"] for e in ref_events if e["ev"] == "stage"]
    outputs = stage_outputs(ref_dir, ref_events)
    plan = kill_plan(stages, stage_writes(ref_events, ops=("write", "unlink")), next_seconds=next_stage_seconds(ref_dir, stages))
    cfg = faults.write_config(tmp_path, pipeline_mock)
    run_dir = tmp_path / "run"

    kills, stops, left_temporaries = [], 0, 0
    for i, step in enumerate(plan + [{}]):  # the last: an uninterrupted rerun
        before = faults.complete_parts(run_dir) if run_dir.exists() else {}
        log = tmp_path / f"events_{i:02d}.jsonl"
        if "cli" in step:
            code = kill_cli(cfg, run_dir, step["cli"], step["delay"])
            events = []
        else:
            code = faults.fork_drive({"config": str(cfg), "log": str(log), **step})
            events = faults.read_log(log)
            assert not [e for e in events if e["ev"] == "error"], (step, [e["traceback"] for e in events if e["ev"] == "error"])
            faults.check_not_redone(before, events)  # a finished chunk is never run again
        finished = step == {}
        if finished:
            assert code == 0, (code, events[-3:])
        elif "stop_after_chunks" in step:
            assert code == faults.STOPPED, (step, code)
            stops += 1
        else:
            assert code == -9, (step, code, events[-3:])
            killed = [e for e in events if e["ev"] == "killed"]
            kills.append(killed[0]["stage"] if killed else first_unfinished(run_dir, stages))
            if killed and killed[0].get("op") == "write" and killed[0]["how"] in ("before", "partial"):  # its temporary is left, hidden beside the file
                dst = run_dir / killed[0]["path"]
                assert [t for t in faults.temporaries(run_dir) if t.parent == dst.parent and t.name.startswith(f".{dst.stem}.")]
                assert not dst.exists() or killed[0]["path"] in {p for s in outputs for p in outputs[s]}
                left_temporaries += 1
        faults.check_run_dir(run_dir, outputs)  # nothing partial where a finished file is expected
        # the parts finished before this call are untouched by it
        after = faults.complete_parts(run_dir)
        for d, parts in before.items():
            for k, mtime in parts.items():
                if k in after.get(d, {}):
                    assert after[d][k] == mtime, (d, k)

    assert len(kills) >= 20 and stops == 2, (kills, stops)
    assert set(kills) == set(stages), sorted(set(stages) - set(kills))  # every stage was killed at least once
    assert left_temporaries > 0 and not faults.temporaries(run_dir)  # the reruns removed the killed writes' leftovers
    assert "temporary file(s) left by an interrupted run" in (run_dir / "run.log").read_text()
    for s in stages:
        assert (run_dir / "stages" / f"{s}.json").is_file(), s
    faults.assert_same_catalogue(ref_dir / "catalogue", run_dir / "catalogue")
    faults.assert_same_models(ref_dir / "models", run_dir / "models")
    print(f"{len(kills)} SIGKILLs ({dict(zip(*np.unique(kills, return_counts=True)))}) and {stops} stops")
