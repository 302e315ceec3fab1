"""Figures of docs/calibration.md: pull widths versus S/N, and flag rates.

    python docs/figures/make_calibration_figures.py            # builds the mock, ~1 min on 2 cores
    python docs/figures/make_calibration_figures.py --replot   # redraws from the saved numbers

The mock of tests/cannon/test_calibration.py (``cannonade.simulate.toy``, the same seeds):
four labels on a curved Kiel-like locus and an α–Fe sequence, 200 pixels through exp and tanh
(a quadratic Cannon has real mismatch) plus a hidden per-star label offset (an error floor),
σ ∝ flux, 0.5 % bad pixels. 4000 training stars at S/N 30–150 with noisy reference labels and
their reported errors; the model is calibrated with ``label_errors``; 9000 test stars at
S/N 20–150 drawn like the training set, plus stars hotter, more metal-poor, and off the locus.

Writes calibration_pulls.png and calibration_flags.png next to this file and prints the
numbers it plots. Only the public API: CannonModel.fit, cross_validate, calibrate, infer.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from cannonade.simulate.toy import NAMES, REF_ERR, KielMock, log_uniform

HERE = Path(__file__).resolve().parent
CACHE = Path("/tmp/cannonade_calibration_figures.npz")

TEX = [r"$T_\mathrm{eff}$", r"$\log g$", "[Fe/H]", r"[$\alpha$/Fe]"]
UNITS = ["K", "dex", "dex", "dex"]
SNR_EDGES = np.geomspace(20.0, 150.0, 8)  # 7 bins, ~1300 test stars each
GROUPS = ["like training\nS/N 30–150", "like training\nS/N 20–30", "hotter\n6500–7000 K",
          "metal-poor\n[Fe/H] −1.8…−1.2", "off the locus\n(inside min–max)"]


# ------------------------------------------------------------------ the measurements
def half_width(x):
    x = x[np.isfinite(x)]
    p16, p84 = np.percentile(x, [16.0, 84.0])
    return 0.5 * (p84 - p16)


def pull_table(pull, snr, rng, n_boot=200):
    """(bins, L) half 84th−16th width of the pulls per S/N bin, its bootstrap 1σ, and counts."""
    nb, L = len(SNR_EDGES) - 1, pull.shape[1]
    width, err, count = np.zeros((nb, L)), np.zeros((nb, L)), np.zeros(nb, int)
    for b in range(nb):
        s = np.flatnonzero((snr >= SNR_EDGES[b]) & (snr < SNR_EDGES[b + 1]))
        count[b] = s.size
        for l in range(L):
            x = pull[s, l]
            width[b, l] = half_width(x)
            err[b, l] = np.std([half_width(x[rng.integers(0, x.size, x.size)]) for _ in range(n_boot)])
    return width, err, count


def measure():
    from cannonade import CannonModel, cross_validate

    t0 = time.perf_counter()
    mock = KielMock()
    rng = np.random.default_rng(7)  # training set
    truth, offset = mock.draw(4000, rng)
    flux, ivar = mock.observe(truth, offset, log_uniform(len(truth), 30, 150, rng), rng)
    err = REF_ERR * rng.uniform(0.5, 1.5, truth.shape)
    ref = truth + err * rng.normal(size=truth.shape)
    m = CannonModel(NAMES, order=2, show_progress=False).fit(ref, flux, ivar)
    cv = cross_validate(m, ref, flux, ivar, k=12, seed=0)
    m.calibrate(cv, label_errors=err)
    print(f"trained, cross-validated (k=12) and calibrated on 4000 stars in {time.perf_counter() - t0:.1f} s")

    rng = np.random.default_rng(11)  # test set, drawn like the training set, at S/N 20–150
    test_truth, test_off = mock.draw(9000, rng)
    r = m.infer(*mock.observe(test_truth, test_off, log_uniform(9000, 20, 150, rng), rng))
    boot = np.random.default_rng(0)
    cal, cal_err, count = pull_table((r.labels - test_truth) / r.errors, r.snr, boot)
    raw, raw_err, _ = pull_table((r.labels - test_truth) / r.raw_errors, r.snr, boot)
    snr_mid = np.array([np.median(r.snr[(r.snr >= lo) & (r.snr < hi)]) for lo, hi in zip(SNR_EDGES[:-1], SNR_EDGES[1:])])
    # the test's three bins, for comparison with the table of docs/calibration.md
    test_bins = []
    for lo, hi in [(20, 40), (40, 80), (80, 150)]:
        s = (r.snr >= lo) & (r.snr < hi)
        test_bins.append([[half_width((r.labels[s, l] - test_truth[s, l]) / e[s, l]) for l in range(4)]
                          for e in (r.raw_errors, r.errors)])

    # flag rates (the test's groups and seed)
    groups = [("like30", r.snr >= 30), ("like20", r.snr < 30)]
    results = {name: (r, sel, test_truth) for name, sel in groups}
    rng = np.random.default_rng(23)
    lab, off = mock.draw_outside(500, rng)
    ro = m.infer(*mock.observe(lab, off, log_uniform(1000, 20, 150, rng), rng))
    results["hot"] = (ro, np.arange(1000) < 500, lab)
    results["poor"] = (ro, np.arange(1000) >= 500, lab)
    lab, off = mock.draw_off_locus(1500, rng)
    inside = np.all((lab >= ref.min(axis=0)) & (lab <= ref.max(axis=0)), axis=1)
    rl = m.infer(*mock.observe(lab[inside], off[inside], log_uniform(int(inside.sum()), 20, 150, rng), rng))
    results["off"] = (rl, np.ones(int(inside.sum()), bool), lab[inside])

    rates = np.zeros((len(results), 4))  # extrapolated, far, either, flags != 0
    n_group = np.zeros(len(results), int)
    kiel = []  # true labels (4), flagged, group
    for g, (res, sel, lab_true) in enumerate(results.values()):
        ext, far = res.extrapolated.any(axis=1)[sel], res.far_from_training[sel]
        rates[g] = [ext.mean(), far.mean(), (ext | far).mean(), (res.flags[sel] != 0).mean()]
        n_group[g] = sel.sum()
        k = np.flatnonzero(sel)
        if g < 2:
            k = k[:600]  # keep the Kiel diagram readable
        flagged = res.extrapolated.any(axis=1) | res.far_from_training
        kiel.append(np.column_stack([lab_true[k], flagged[k], np.full(len(k), g)]))
    print(f"all done in {time.perf_counter() - t0:.1f} s")
    return dict(snr_mid=snr_mid, count=count, cal=cal, cal_err=cal_err, raw=raw, raw_err=raw_err,
                test_bins=np.array(test_bins), rates=rates, n_group=n_group, kiel=np.vstack(kiel),
                train_kiel=truth[:1500])


# ------------------------------------------------------------------ the figures
def plot_pulls(d, path):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    fig, axes = plt.subplots(2, 2, figsize=(7.5, 6.0), sharex=True, sharey=True, constrained_layout=True)
    for l, ax in enumerate(axes.flat):
        ax.axhspan(0.9, 1.1, color="tab:green", alpha=0.2, lw=0, label="target 1 ± 0.1")
        ax.axhline(1.0, color="tab:green", lw=0.8)
        ax.errorbar(d["snr_mid"], d["raw"][:, l], d["raw_err"][:, l], fmt="s--", color="tab:red", mfc="white",
                    ms=5, capsize=2, label="formal (r.raw_errors)")
        ax.errorbar(d["snr_mid"], d["cal"][:, l], d["cal_err"][:, l], fmt="o-", color="tab:blue", ms=5, capsize=2,
                    label="calibrated (r.errors)")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([20, 30, 50, 80, 150]))
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(18, 165)
        ax.set_ylim(0, 1.1 * max(d["raw"].max(), 1.2))
        ax.set_title(f"{TEX[l]} ({UNITS[l]})", fontsize=11)
        ax.grid(alpha=0.3)
        if l >= 2:
            ax.set_xlabel("S/N (median flux·√ivar per pixel)")
        if l % 2 == 0:
            ax.set_ylabel("pull width  ½(p84 − p16)\nof (inferred − true) / σ")
    axes[0, 0].legend(loc="upper left", fontsize=8.5, framealpha=0.9)
    fig.suptitle("Pull widths on 9000 mock test stars (noisy reference labels + label_errors)", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_flags(d, path):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9.0, 8.2), constrained_layout=True)
    gs = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.05])
    ax, kx, fx = fig.add_subplot(gs[0, :]), fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1])
    x = np.arange(len(GROUPS))
    w = 0.27
    bars = [("extrapolated.any()  (KDE bounds)", 0, "tab:orange"), ("far_from_training  (D > 8)", 1, "tab:purple"),
            ("flagged: either", 2, "tab:red")]
    for i, (lab, col, c) in enumerate(bars):
        v = 100 * d["rates"][:, col]
        b = ax.bar(x + (i - 1) * w, v, w, label=lab, color=c)
        ax.bar_label(b, labels=["100" if u >= 99.95 else f"{u:.1f}" for u in v], fontsize=8, padding=1)
    ax.set_xticks(x, [f"{g}\n(n = {n})" for g, n in zip(GROUPS, d["n_group"])], fontsize=9)
    ax.set_ylabel("test stars flagged (%)")
    ax.set_ylim(0, 115)
    ax.legend(loc="upper left", fontsize=9, framealpha=0.95)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Flag rates per group of test stars (noisy reference labels + label_errors)", fontsize=11)

    k, tk = d["kiel"], d["train_kiel"]
    flag, group = k[:, 4] > 0.5, k[:, 5].astype(int)
    # Kiel diagram: like training, hotter, off the locus; α–Fe plane: like training, metal-poor
    for a, (i, j), show, (xl, yl), (xlim, ylim) in (
            (kx, (0, 1), (0, 1, 2, 4), (r"true $T_\mathrm{eff}$ (K)", r"true $\log g$ (dex)"), ((7150, 4150), (5.3, 0.4))),
            (fx, (2, 3), (0, 1, 3), ("true [Fe/H] (dex)", r"true [$\alpha$/Fe] (dex)"), ((-2.0, 0.7), (-0.15, 0.75)))):
        sel = np.isin(group, show)
        a.scatter(tk[:, i], tk[:, j], s=3, c="0.7", lw=0, label="training set", rasterized=True)
        a.scatter(k[sel & ~flag, i], k[sel & ~flag, j], s=5, c="tab:blue", lw=0, label="test: not flagged",
                  rasterized=True)
        a.scatter(k[sel & flag, i], k[sel & flag, j], s=8, c="tab:red", marker="x", lw=0.6, label="test: flagged",
                  rasterized=True)
        a.set_xlim(*xlim)
        a.set_ylim(*ylim)
        a.set_xlabel(xl)
        a.set_ylabel(yl)
        a.grid(alpha=0.3)
    kx.set_title("Kiel diagram: like training, hotter, off the locus", fontsize=10)
    fx.set_title("α–Fe plane: like training, metal-poor", fontsize=10)
    kx.legend(loc="upper left", fontsize=8.5, markerscale=2.5, framealpha=0.95)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(d):
    print("\npull width = half (84th − 16th percentile) of (inferred − true)/error, per S/N bin "
          "(± bootstrap 1σ); labels " + " ".join(NAMES))
    for b in range(len(d["count"])):
        lo, hi = SNR_EDGES[b], SNR_EDGES[b + 1]
        f = " ".join(f"{v:.2f}±{e:.2f}" for v, e in zip(d["raw"][b], d["raw_err"][b]))
        c = " ".join(f"{v:.2f}±{e:.2f}" for v, e in zip(d["cal"][b], d["cal_err"][b]))
        print(f"  S/N {lo:5.1f}–{hi:5.1f} (median {d['snr_mid'][b]:5.1f}, n={d['count'][b]:4d}):  formal {f}   calibrated {c}")
    print("the test's bins 20–40 | 40–80 | 80–150:")
    for i, what in enumerate(("formal", "calibrated")):
        print(f"  {what:10s} " + " | ".join(" ".join(f"{v:.2f}" for v in row[i]) for row in d["test_bins"]))
    print("\nflag rates (%): extrapolated.any() | far_from_training | either | flags != 0")
    for g, n, r in zip(GROUPS, d["n_group"], d["rates"]):
        print(f"  {g.replace(chr(10), ' '):45s} n={n:4d}  " + "  ".join(f"{100 * v:5.1f}" for v in r))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replot", action="store_true", help=f"redraw from {CACHE} instead of rebuilding the mock")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    if args.replot:
        with np.load(CACHE) as f:
            d = {k: f[k] for k in f.files}
    else:
        d = measure()
        np.savez(CACHE, **d)
    report(d)
    for name, fn in (("calibration_pulls.png", plot_pulls), ("calibration_flags.png", plot_flags)):
        fn(d, HERE / name)
        print(f"wrote {HERE / name} ({(HERE / name).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
