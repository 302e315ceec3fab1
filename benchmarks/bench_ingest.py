"""Benchmark ``cannonade ingest`` on synthetic LAMOST DR1-layout files.

Writes N synthetic spectra in the real LAMOST DR1 image layout (5 x 3909 float32
primary image: flux, ivar, normalised flux, andmask, ormask; log-linear
COEFF0/COEFF1 wavelengths; Z, RA, DEC, DESIG, SN_* header keys), ingests them
with 2 workers onto the 'lamost' grid with Gaussian continuum normalisation,
and prints spectra per second and peak memory for each N.

Each N is ingested in a fresh subprocess so that peak-memory numbers
(``resource.getrusage`` max RSS of the ingest process and of its workers) are
independent of each other.

Usage::

    python benchmarks/bench_ingest.py --n 2000 20000 [--workers 2] [--dir /tmp/bench]

``--breakdown FILE_LIST`` instead measures where one core's time goes per spectrum (CPU time,
BLAS on one thread) on the files listed (one path per line; e.g. ``bench_survey.py``'s
``list_<N>.txt`` of gzipped mock LAMOST files): reading the bytes, gunzip, the header cards,
decoding the image, the rest frame, resampling, the continuum and the store-ready arrays, and the
whole ``prepare_files`` (what an ingest worker runs). Beside it, the same files read by astropy
(``fits.open`` + the image) and by ``fitsio`` (cfitsio, when installed)::

    python benchmarks/bench_ingest.py --breakdown /tmp/bench_survey/list_30000.txt [--n 2000]

``--galah-stars N`` measures one core's CPU time per GALAH star (``ingest(join='star')``'s worker
step, ``prepare_stars``: four CCD files read, resampled onto the ``galah`` grid and normalised CCD
by CCD) on the real GALAH sample (``../shared/data/galah/com``: 6 stars x 4 CCDs, ~400 kB per
file) replicated to N stars by symbolic links with new sobject_ids; and, side by side, the
Gaussian continuum of those rows applied as factored kernel blocks (what ingest runs) and as
the sparse kernel (what it ran before), with each one's one-time build::

    python benchmarks/bench_ingest.py --galah-stars 500 [--galah-dir ../shared/data/galah/com]

``--apstar N`` does the same for APOGEE apStar files (``../shared/data/apogee``, 5 real files read
N times over): one worker's ``prepare_files`` with the Chebyshev continuum (the Nandakumar
recipe's) and the Gaussian, and reading a file straight from its bytes (what ingest runs) against
astropy's reading of it (what it ran before)::

    python benchmarks/bench_ingest.py --apstar 300
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NPIX = 3909
COEFF0, COEFF1 = 3.5682, 1e-4


def _header_template():
    from astropy.io import fits

    h = fits.Header()
    h["FILENAME"] = ("", "")
    h["AUTHOR"] = "LAMOST Pipeline"
    h["N_EXTEN"] = 1
    h["EXTEN0"] = "Flux Inverse Subcontinuum Andmask Ormask"
    h["TELESCOP"] = "LAMOST"
    h["LMJD"] = 55862
    h["MJD"] = 55863
    h["PLANID"] = "B6212"
    h["RA"] = (0.0, "[deg] Right ascension of object")
    h["DEC"] = (0.0, "[deg] Declination of object")
    h["DESIG"] = ("", "Designation of LAMOST target")
    h["FIBERID"] = 1
    h["OBJTYPE"] = "star"
    h["HELIO"] = True
    h["HELIO_RV"] = -26.4
    h["VACUUM"] = (True, "Wavelengths are in vacuum")
    h["NWORDER"] = 2
    h["WFITTYPE"] = "LOG-LINEAR"
    h["COEFF0"] = (COEFF0, "Central wavelength (log10) of first pixel")
    h["COEFF1"] = (COEFF1, "Log10 dispersion per pixel")
    h["CRVAL1"] = COEFF0
    h["CD1_1"] = COEFF1
    h["CRPIX1"] = 1
    h["CTYPE1"] = "LINEAR"
    h["DC-FLAG"] = 1
    h["CLASS"] = "STAR"
    h["SUBCLASS"] = "G5"
    h["Z"] = (0.0, "Redshift of object")
    h["Z_ERR"] = 4e-5
    for band in "UGRIZ":
        h[f"SN_{band}"] = 50.0
    return h


def write_synthetic_lamost(directory, n, seed=0, progress_every=0):
    """Write ``n`` synthetic LAMOST DR1-layout files; return their paths."""
    from astropy.io import fits

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wave = 10.0 ** (COEFF0 + COEFF1 * np.arange(NPIX))
    template = _header_template()
    line_centres = rng.uniform(3800, 8900, 300)
    paths = []
    for k in range(n):
        path = directory / f"spec-55862-B6212_sp{k // 250 + 1:02d}-{k % 250 + 1:03d}_{k:07d}.fits"
        paths.append(path)
        if path.exists():
            continue
        z = rng.normal(0, 1e-4)
        teff_slope = rng.uniform(-1, 1)
        cont = 1000.0 * (1.0 + 0.3 * teff_slope * (wave - 6000) / 3000 - 0.2 * ((wave - 6000) / 3000) ** 2)
        depth = rng.uniform(0.05, 0.5, line_centres.size)
        lines = np.ones(NPIX)
        obs = line_centres * (1 + z)
        for c, d in zip(obs[::10], depth[::10]):  # a few strong lines per spectrum (cheap)
            lines -= d * np.exp(-0.5 * ((wave - c) / 3.0) ** 2)
        snr = rng.uniform(10, 150)
        sigma = cont / snr
        flux = cont * lines + rng.normal(0, 1, NPIX) * sigma
        ivar = 1.0 / sigma**2
        andmask = np.zeros(NPIX)
        bad = rng.random(NPIX) < 0.01
        andmask[bad] = 1
        ivar[bad] = 0
        data = np.stack([flux, ivar, flux / cont, andmask, np.zeros(NPIX)]).astype(np.float32)
        h = template.copy()
        h["FILENAME"] = path.name
        h["RA"] = rng.uniform(0, 360)
        h["DEC"] = rng.uniform(-10, 60)
        h["DESIG"] = f"LAMOST J{k:06d}.00+000000.0"
        h["Z"] = z
        h["SN_G"] = snr
        fits.PrimaryHDU(data=data, header=h).writeto(path, overwrite=True)
        if progress_every and (k + 1) % progress_every == 0:
            print(f"  wrote {k + 1}/{n}", file=sys.stderr, flush=True)
    return paths


def _run_one(listfile, out, workers, chunk_size):
    """Ingest in this (fresh) process and print a JSON line with timing and peak memory."""
    os.environ.setdefault("CANNONADE_QUIET", "1")
    from cannonade.spectra.ingest import ingest

    t0 = time.perf_counter()
    report = ingest([f"@{listfile}"], out, grid="lamost", normalise="gaussian", workers=workers, chunk_size=chunk_size)
    dt = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"n_ok": report.n_ok, "n_failed": report.n_failed, "seconds": dt, "self_mb": self_kb / 1024, "worker_mb": child_kb / 1024}))


def _cpu_ms(fn, n):
    """CPU milliseconds per item of ``fn()`` over ``n`` items, and its result."""
    t0 = time.process_time()
    out = fn()
    return (time.process_time() - t0) / n * 1e3, out


def _as_one_worker():
    """Run as one ingest worker does: quiet, BLAS on one thread, freed memory kept for reuse
    (cannonade.execution.memory)."""
    os.environ.setdefault("CANNONADE_QUIET", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    from cannonade.execution.memory import keep_freed_memory

    keep_freed_memory()


def breakdown(listfile, n):
    """Print CPU ms per spectrum of each ingest step on the first ``n`` files of ``listfile``."""
    _as_one_worker()
    from cannonade.spectra import ingest as ing
    from cannonade.spectra.preprocessing import doppler_shift, normalise_batch, resample_batch
    from cannonade.spectra.readers import lamost
    from cannonade.spectra.readers.fits import _gunzip, check_hdus
    from cannonade.spectra.surveys import common_grid

    files = [line.strip() for line in open(listfile) if line.strip()][:n]
    n = len(files)
    grid = common_grid("lamost")
    ing.prepare_files(files[:64], grid)  # caches (kernel, wavelengths) as a worker has them after its first chunk
    # one pass as prepare_files makes it (file by file, then batches), each step's CPU time summed
    names = ["open + read the file", "gunzip", "header cards (check_hdus)", "image + LAMOST decode (load_raw)",
             "rest frame (doppler_shift)", "resample (batches of 32)", "continuum + divide (batches of 256)",
             "store-ready float32 rows (put_rows)"]
    ns = dict.fromkeys(names, 0)
    clock = time.thread_time_ns
    f32 = np.empty((ing._NORM_BATCH, grid.size), np.float32)
    i32 = np.empty_like(f32)
    metas = [{} for _ in range(ing._NORM_BATCH)]
    pending, resampled = [], []

    def timed(name, fn, *args):
        t0 = clock()
        out = fn(*args)
        ns[name] += clock() - t0
        return out

    def flush_resample():
        if pending:
            cols = [np.array([p[c] for p in pending]) for c in range(3)]
            resampled.append(timed(names[5], resample_batch, *cols, grid))
            pending.clear()

    def flush_normalise():
        flush_resample()
        if resampled:
            fl, iv = np.concatenate([r[0] for r in resampled]), np.concatenate([r[1] for r in resampled])
            nf, ni = timed(names[6], normalise_batch, grid, fl, iv)
            timed(names[7], ing.put_rows, f32, i32, metas, range(len(nf)), nf, ni)
            resampled.clear()

    for f in files:
        packed = timed(names[0], Path(f).read_bytes)
        raw = timed(names[1], _gunzip, packed, f)
        (h, start, _), *_ = timed(names[2], check_hdus, raw, f)
        spec = timed(names[3], lamost.load_raw, raw, h, start, f)
        pending.append((timed(names[4], doppler_shift, spec.wavelength, spec.meta["redshift"]), spec.flux, spec.ivar))
        if len(pending) == ing._RESAMPLE_BATCH:
            flush_resample()
        if sum(len(r[0]) for r in resampled) >= ing._NORM_BATCH:
            flush_normalise()
    flush_normalise()
    rows = [(name, ns[name] / n / 1e6) for name in names]
    parts = sum(ms for _, ms in rows)

    def step(name, fn):
        ms, out = _cpu_ms(fn, n)
        rows.append((name, ms))
        return ms

    whole = step("whole prepare_files (one worker's chunk)", lambda: ing.prepare_files(files, grid))
    from astropy.io import fits

    def astropy_all():
        for f in files:
            with fits.open(f, memmap=False) as hdul:
                _ = dict(hdul[0].header), np.asarray(hdul[0].data, dtype=np.float64)

    step("astropy: fits.open + header + image", astropy_all)
    try:
        import fitsio
    except ImportError:
        fitsio = None
    if fitsio is not None:
        def fitsio_all():
            for f in files:
                with fitsio.FITS(f) as fh:
                    _ = fh[0].read_header(), fh[0].read()

        step("fitsio: header + image", fitsio_all)
    print(f"\nwhere ingest's time goes: {n} files of {listfile}, CPU ms per spectrum (BLAS on one thread)")
    print("| step | ms per spectrum |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")
    print(f"\nsum of the steps {parts:.3f} ms; prepare_files {whole:.3f} ms per spectrum = {1e3 / whole:.0f} spectra/s "
          "per core (4 000 spectra/s on 2 cores needs 0.5 ms)")
    return 0


def galah_stars(n_stars, source):
    """Print CPU ms per GALAH star of prepare_stars (each normalisation) and of the Gaussian
    continuum factored vs sparse, on the real sample replicated to ``n_stars`` stars."""
    _as_one_worker()
    from cannonade.spectra import continuum
    from cannonade.spectra.ingest import prepare_stars
    from cannonade.spectra.readers import read_spectrum
    from cannonade.spectra.readers.fits import check_hdus, read_bytes
    from cannonade.spectra.surveys import common_grid, detector_regions

    source = Path(source)
    stars = sorted({p.name[:15] for p in source.glob("*.fits")})
    if not stars:
        raise SystemExit(f"no GALAH CCD files (<sobject_id><ccd>.fits) in {source}")
    tmp = Path(tempfile.mkdtemp(prefix="cannonade_galah_"))
    try:
        files = []
        for k in range(n_stars):
            sid = stars[k % len(stars)]
            for ccd in (1, 2, 3, 4):
                link = tmp / f"2101150{k:08d}{ccd}.fits"  # a new 15-digit sobject_id per star
                link.symlink_to((source / f"{sid}{ccd}.fits").resolve())
                files.append(str(link))
        grid = common_grid("galah")
        rows = []
        for norm in ("gaussian", "chebyshev", "none"):
            prepare_stars(files[:8], grid, normalise=norm)  # caches, as a worker has them after its first chunk
            ms, out = _cpu_ms(lambda: prepare_stars(files, grid, normalise=norm), n_stars)
            assert len(out[2]) == n_stars, out[3][:3]
            rows.append((f"prepare_stars, {norm} continuum (one worker's chunk)", ms))
        rows.append(("read + decode the 4 CCD files (read_spectrum)", _cpu_ms(lambda: [read_spectrum(f) for f in files], n_stars)[0]))
        rows.append(("  of which the header cards (check_hdus)", _cpu_ms(lambda: [check_hdus(read_bytes(f), f) for f in files], n_stars)[0]))
        # the Gaussian continuum alone, each CCD region's rows as prepare_stars normalises them
        rng = np.random.default_rng(0)
        regions = [grid[(grid >= lo) & (grid <= hi)] for lo, hi in detector_regions("galah")]
        batch = [(w, rng.normal(1.0, 0.05, (256, w.size)), rng.uniform(100, 400, (256, w.size))) for w in regions]
        for name, use_sparse in (("factored blocks", False), ("sparse kernel", True)):
            continuum._PIECES.clear()
            continuum._KERNELS.clear()
            pieces = continuum._kernel_pieces
            if use_sparse:
                continuum._kernel_pieces = lambda *a: None
            try:
                build, _ = _cpu_ms(lambda: [continuum.continuum_gaussian_batch(w, f[:1], i[:1]) for w, f, i in batch], 1)
                ms, _ = _cpu_ms(lambda: [continuum.continuum_gaussian_batch(w, f, i) for w, f, i in batch], 256)
            finally:
                continuum._kernel_pieces = pieces
            rows.append((f"Gaussian continuum of a star's 4 CCDs, {name} (one-time build: {build / 1e3:.1f} s)", ms))
        factored, sparse = rows[-2][1], rows[-1][1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nGALAH stars: {n_stars} stars ({len(stars)} real stars' files, {source}), grid 'galah' ({grid.size} px), "
          "CPU ms per star (BLAS on one thread)")
    print("| step | ms per star |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")
    print(f"\nGaussian continuum: factored blocks {sparse / factored:.1f}x faster than the sparse kernel")
    return 0


def apstar(n, source):
    """Print CPU ms per apStar file of prepare_files and of reading it (bytes vs astropy)."""
    _as_one_worker()
    from cannonade.spectra.ingest import prepare_files
    from cannonade.spectra.readers import apogee, read_spectrum
    from cannonade.spectra.readers.fits import open_fits
    from cannonade.spectra.surveys import common_grid

    source = Path(source)
    real = sorted(source.glob("apStar-*.fits")) + sorted(source.glob("apStar_dr13/apStar-*.fits"))
    if not real:
        raise SystemExit(f"no apStar files in {source}")
    files = [str(real[k % len(real)]) for k in range(n)]
    grid = common_grid("apogee")
    rows = []
    for norm in ("chebyshev", "gaussian"):
        prepare_files(files[:5], grid, normalise=norm)  # caches, as a worker has them after its first chunk
        ms, out = _cpu_ms(lambda: prepare_files(files, grid, normalise=norm), n)
        assert len(out[2]) == n, out[3][:3]
        rows.append((f"prepare_files, {norm} continuum (one worker's chunk)", ms))

    def astropy_read(f):
        with open_fits(f) as hdul:
            return apogee.load(hdul, f, "apstar")

    fast = _cpu_ms(lambda: [read_spectrum(f) for f in files], n)[0]
    slow = _cpu_ms(lambda: [astropy_read(f) for f in files], n)[0]
    rows += [("read a file: from its bytes (identify_hdus + load_hdus)", fast), ("read a file: astropy (open_fits + load)", slow)]
    print(f"\napStar files: {n} reads of {len(real)} real files ({source}), CPU ms per file (BLAS on one thread)")
    print("| step | ms per file |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")
    print(f"\nreading from the bytes: {slow / fast:.1f}x faster than astropy")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--breakdown", metavar="FILE_LIST", help="per-step CPU time per spectrum on these files (see above)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where to write the synthetic files (default: a temporary dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic files")
    ap.add_argument("--galah-stars", type=int, metavar="N", help="CPU time per GALAH star (see above)")
    ap.add_argument("--galah-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "galah" / "com"),
                    help="the real GALAH CCD files replicated by --galah-stars")
    ap.add_argument("--apstar", type=int, metavar="N", help="CPU time per apStar file (see above)")
    ap.add_argument("--apogee-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "apogee"),
                    help="the real apStar files read by --apstar")
    ap.add_argument("--_one", nargs=2, metavar=("LIST", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.apstar:
        return apstar(args.apstar, args.apogee_dir)
    if args.galah_stars:
        return galah_stars(args.galah_stars, args.galah_dir)
    if args.breakdown:
        return breakdown(args.breakdown, args.n[0] if args.n != ap.get_default("n") else 2000)
    if args._one:
        _run_one(args._one[0], args._one[1], args.workers, args.chunk_size)
        return 0

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cannonade_bench_"))
    spectra_dir = base / "spectra"
    nmax = max(args.n)
    t0 = time.perf_counter()
    print(f"writing {nmax} synthetic LAMOST DR1-layout files to {spectra_dir} ...", file=sys.stderr, flush=True)
    paths = write_synthetic_lamost(spectra_dir, nmax, progress_every=5000)
    print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    rows = []
    for n in args.n:
        listfile = base / f"files_{n}.txt"
        listfile.write_text("\n".join(str(p) for p in paths[:n]) + "\n")
        out = base / f"store_{n}.h5"
        for stale in (out, Path(str(out) + ".parts")):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        cmd = [sys.executable, __file__, "--workers", str(args.workers), "--chunk-size", str(args.chunk_size), "--_one", str(listfile), str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            raise SystemExit(f"ingest of {n} files failed")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["n"] = n
        r["rate"] = r["n_ok"] / r["seconds"]
        rows.append(r)

    print(f"\ncannonade ingest benchmark: LAMOST DR1 layout, grid 'lamost' (3900 px), gaussian continuum, "
          f"{args.workers} workers, chunk {args.chunk_size}, {os.cpu_count()} CPUs visible")
    print(f"{'N files':>9} {'ok':>7} {'failed':>6} {'seconds':>8} {'spectra/s':>10} {'peak MB main':>13} {'peak MB worker':>15}")
    for r in rows:
        print(f"{r['n']:>9d} {r['n_ok']:>7d} {r['n_failed']:>6d} {r['seconds']:>8.1f} {r['rate']:>10.0f} {r['self_mb']:>13.0f} {r['worker_mb']:>15.0f}")
    if not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
