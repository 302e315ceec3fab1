"""Benchmark cannonade.galaxy.dynamics.orbits: stars/s, projected time for 1e6 stars, peak memory.

Target (issue 6): 1 million stars x 21 evaluations (nominal + 20 resamples) in
<= 15 minutes on 2 cores, memory flat in the number of stars. Measured floor:
galpy's compiled Stäckel with a fixed delta, ~0.4 s per 10 000 evaluations.

Each size runs in a fresh subprocess so its peak RSS is its own (and builds its own action
grid with ``--action-method staeckel_grid``: the set-up is reported apart, ``grid_setup_s``).
With the grid, the nominal actions of the first 20 000 stars are also compared with the direct
fudge, disc and halo apart (relative differences, and differences in units of the MC errors).

    python benchmarks/bench_dynamics.py --n 10000 100000 --n-samples 20
    python benchmarks/bench_dynamics.py --n 10000 100000 --action-method staeckel_grid
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def mock_catalogue(n, seed=0):
    """n mock stars (90% disc, 10% halo) as heliocentric observables with errors."""
    import astropy.coordinates as coord
    import astropy.units as u
    from astropy.table import Table

    from cannonade.galaxy.dynamics import galactocentric_frame

    rng = np.random.default_rng(seed)
    halo = rng.random(n) < 0.1
    R = np.where(halo, rng.uniform(4, 20, n), rng.uniform(6, 12, n))
    phi = rng.uniform(-0.4, 0.4, n)
    z = np.where(halo, rng.uniform(-6, 6, n), rng.normal(0, 0.4, n))
    vR = rng.normal(0, np.where(halo, 140, 35))
    vT = np.where(halo, rng.normal(20, 100, n), rng.normal(215, 25, n))
    vz = rng.normal(0, np.where(halo, 100, 25))
    x, y = -R * np.cos(phi), R * np.sin(phi)
    vx = -vR * np.cos(phi) + vT * np.sin(phi)
    vy = vR * np.sin(phi) + vT * np.cos(phi)
    kms = u.km / u.s
    c = coord.SkyCoord(x=x * u.kpc, y=y * u.kpc, z=z * u.kpc, v_x=vx * kms, v_y=vy * kms, v_z=vz * kms,
                       frame=galactocentric_frame()).transform_to(coord.ICRS())
    d = c.distance.to_value(u.kpc)
    t = Table()
    t["ra"], t["dec"], t["distance"] = c.ra.deg, c.dec.deg, d
    t["pmra"] = c.pm_ra_cosdec.to_value(u.mas / u.yr)
    t["pmdec"] = c.pm_dec.to_value(u.mas / u.yr)
    t["radial_velocity"] = c.radial_velocity.to_value(kms)
    t["distance_err"] = 0.1 * d
    t["radial_velocity_err"] = np.full(n, 5.0)
    t["pmra_error"] = np.full(n, 0.05)
    t["pmdec_error"] = np.full(n, 0.05)
    t["halo"] = halo  # ignored by orbits(); splits the accuracy figures
    return t


def accuracy(out, t, m=20_000):
    """Grid vs direct nominal actions of the first m stars: disc/halo medians and p99s."""
    from cannonade.galaxy.dynamics import actions, energy, in_grid_domain

    o = out[:m]
    cols = [np.asarray(o[k], float) for k in ("R", "z", "vR", "vT", "vz")]
    direct = dict(zip(("JR", "Jphi", "Jz"), actions(*cols)[:3]))
    on = in_grid_domain(energy(*cols), cols[0] * cols[3])
    halo = np.asarray(t["halo"][:m])
    res = {}
    for part, sel in (("disc", ~halo), ("halo", halo)):
        res[part] = {"n": int(sel.sum()), "on_grid": float(np.mean(on[sel]))}
        for k, ref in direct.items():
            ok = sel & np.isfinite(ref)
            d = np.abs(np.asarray(o[k], float)[ok] - ref[ok])
            rel = d / np.abs(ref[ok])
            sig = d / np.asarray(o["e_" + k], float)[ok]
            res[part][k] = [float(np.median(rel)), float(np.percentile(rel, 99)), float(np.percentile(d, 99)),
                            float(np.nanpercentile(sig, 99)), float(np.nanmax(sig))]
    return res


def run_one(n, n_samples, chunk_size, action_method="staeckel"):
    from cannonade.galaxy.dynamics import actions, orbits, prepare_action_method

    t = mock_catalogue(n)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    setup = 0.0
    if action_method == "staeckel_grid":  # once per process, timed apart
        t0 = time.perf_counter()
        prepare_action_method(action_method)
        setup = time.perf_counter() - t0
    # galpy floor on the same number of evaluations, capped (nominal values only)
    m = min(n, 20_000)
    g = orbits(t[:m], n_samples=0, show_progress=False)
    t0 = time.perf_counter()
    actions(np.asarray(g["R"]), np.asarray(g["z"]), np.asarray(g["vR"]), np.asarray(g["vT"]), np.asarray(g["vz"]),
            method=action_method)
    floor_per_eval = (time.perf_counter() - t0) / m
    c0 = os.times()
    t0 = time.perf_counter()
    out = orbits(t, n_samples=n_samples, seed=0, chunk_size=chunk_size, action_method=action_method)
    dt = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    n_eval = n * (n_samples + 1)
    return dict(
        n=n,
        action_method=action_method,
        grid_setup_s=setup,
        accuracy=accuracy(out, t) if action_method == "staeckel_grid" else None,
        n_samples=n_samples,
        chunk_size=chunk_size,
        seconds=dt,
        stars_per_s=n / dt,
        evals_per_s=n_eval / dt,
        projected_1e6_min=1e6 / (n / dt) / 60.0,
        cpu_seconds=cpu,
        # on a shared machine wall time overstates the cost; CPU time / 2 is the wall
        # time on 2 dedicated cores (galpy's OpenMP loop scales ~linearly)
        projected_1e6_min_2cores_from_cpu=cpu * (1e6 / n) / 2 / 60.0,
        galpy_floor_s_per_10k_evals=floor_per_eval * 1e4,
        galpy_floor_share=floor_per_eval * n_eval / dt,
        peak_rss_mb=peak,
        rss_before_orbits_mb=rss0,
        n_unbound=int(np.sum(out["unbound"])),
        median_e_JR=float(np.nanmedian(out["e_JR"])),
        median_e_Jphi=float(np.nanmedian(out["e_Jphi"])),
        median_e_Jz=float(np.nanmedian(out["e_Jz"])),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="catalogue sizes")
    p.add_argument("--n-samples", type=int, default=20)
    p.add_argument("--chunk-size", type=int, default=50_000)
    p.add_argument("--action-method", default="staeckel", choices=["staeckel", "staeckel_grid"],
                   help="orbits(action_method=...): the direct fudge (default) or the interpolated grid")
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.single:
        print(json.dumps(run_one(args.n[0], args.n_samples, args.chunk_size, args.action_method)))
        return 0
    env = dict(os.environ, CANNONADE_QUIET="1")
    print(f"cpu count {os.cpu_count()}, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'unset')} "
          "(machine shared with other engineers: timings are upper bounds)")
    for n in args.n:
        cmd = [sys.executable, __file__, "--single", "--n", str(n), "--n-samples", str(args.n_samples), "--chunk-size", str(args.chunk_size),
               "--action-method", args.action_method]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1])
        print(
            f"[{res['action_method']}] n={res['n']:>9,d}  x{res['n_samples'] + 1} evals: {res['seconds']:8.1f} s  "
            f"{res['stars_per_s']:8.0f} stars/s  {res['evals_per_s']:9.0f} evals/s  "
            f"-> 1e6 stars in {res['projected_1e6_min']:5.1f} min wall "
            f"({res['projected_1e6_min_2cores_from_cpu']:5.1f} min on 2 free cores from CPU time {res['cpu_seconds']:.0f} s)  | galpy floor "
            f"{res['galpy_floor_s_per_10k_evals']:.2f} s/10k evals ({100 * res['galpy_floor_share']:.0f}% of time)  | "
            f"peak RSS {res['peak_rss_mb']:.0f} MB (table built: {res['rss_before_orbits_mb']:.0f} MB)  | "
            f"median e_JR/e_Jphi/e_Jz {res['median_e_JR']:.1f}/{res['median_e_Jphi']:.1f}/{res['median_e_Jz']:.1f} kpc km/s"
        )
        if res["action_method"] == "staeckel_grid":
            print(f"    grid set-up {res['grid_setup_s']:.1f} s (once per process, not in the timing above); "
                  "grid - direct, nominal actions of the first 20 000 stars: "
                  "median |d|/J, p99 |d|/J, p99 |d| [kpc km/s], p99 and max |d|/e_J")
            for part, acc in res["accuracy"].items():
                cells = "  ".join(f"{k} {v[0]:.1e} {v[1]:.1e} {v[2]:.3g} {v[3]:.2f} {v[4]:.2f}" for k, v in acc.items()
                                  if k in ("JR", "Jphi", "Jz"))
                print(f"    {part} (n={acc['n']}, {100 * acc['on_grid']:.0f}% on the grid): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
