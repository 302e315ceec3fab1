"""A mock Milky Way: thin disc, thick disc and halo stars, open clusters and wide binaries.

Positions follow analytic density laws (exponential discs, power-law halo)
times a distance selection that depends on the star's luminosity class;
velocities follow each component's rotation and velocity ellipsoid; chemistry
follows the component (radial [Fe/H] gradient, α-enhanced thick disc and
halo) with [X/Fe] relations whose slopes and scatter were read off the real
APOGEE DR12 label catalogue (O, Mg, Si, Ca, Ti track [α/Fe]; Mn anti-correlates;
Y and Ba share an s-process factor). Stellar parameters lie on isochrone-like
tracks: dwarfs, subgiants, red giants, red clump.

Coordinates: the pipeline's own Galactocentric frame,
:func:`cannonade.galaxy.dynamics.galactocentric_frame` (Wheeler+2020 §5.1: Sun at
(x, y, z) = (-8, 0, 0.025) kpc moving with (U, V, W) = (11.1, 232.24, 7.25) km/s), so the
truth and the pipeline's dynamics share one frame. The discs rotate with the circular
speed of galpy's ``MWPotential2014`` (the potential the actions are computed in) less an
asymmetric drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from cannonade.galaxy.dynamics import R0_KPC, Z_SUN_KPC, circular_speed, galactocentric_frame
from cannonade.simulate.formation import default_vmic
from cannonade.simulate.lines import ABUNDANCE_ELEMENTS

__all__ = ["simulate_population", "XFE_RELATIONS", "INTRINSIC_XFE_SCATTER_SCALE", "R0_KPC", "STAGES", "ASYMMETRIC_DRIFT_KMS", "HALO_ROTATION_KMS",
           "NamedCluster", "NAMED_CLUSTERS", "named_cluster_members"]

# (sigma_R, sigma_phi, sigma_z) at R0 [km/s] of the thin disc, thick disc and halo
_DISPERSIONS = np.array([(35.0, 25.0, 18.0), (60.0, 45.0, 40.0), (150.0, 100.0, 100.0)])
#: mean rotation lag of the thin and thick discs behind MWPotential2014's circular speed [km/s]
ASYMMETRIC_DRIFT_KMS = (10.0, 40.0)
#: mean rotation of the halo [km/s]
HALO_ROTATION_KMS = 20.0
#: the thin disc's radial [Fe/H] gradient (dex/kpc; [Fe/H] = −0.05 at the Sun's radius); the thick
#: disc and the halo have none
THIN_DISC_FEH_GRADIENT = -0.06
#: the intrinsic [X/Fe] scatter about :data:`XFE_RELATIONS` as a fraction of its σ, which were fitted
#: to catalogue values and so hold that catalogue's measurement errors (~0.03–0.04 dex in quadrature:
#: sqrt(0.045² − 0.035²) ≈ 0.6 × 0.045); the apogee-galah preset draws its stars with it, and its
#: surveys add their own noise on top (docs/simulate.md)
INTRINSIC_XFE_SCATTER_SCALE = 0.6
STAGES = np.array(["dwarf", "subgiant", "rgb", "rc"])
POPULATIONS = ("thin", "thick", "halo")

# [X/Fe] = a + b [Fe/H] + c [α/Fe] + d s + N(0, sigma); s = an s-process factor (Y, Ba).
# Slopes from a least-squares fit to the APOGEE DR12 catalogue (../shared/data/catalogs).
XFE_RELATIONS = {
    "O": (0.00, -0.10, 0.95, 0.00, 0.05),
    "Na": (-0.02, 0.10, 0.35, 0.00, 0.08),
    "Mg": (-0.03, 0.00, 1.10, 0.00, 0.04),
    "Al": (0.00, 0.10, 1.00, 0.00, 0.07),
    "Si": (0.02, -0.04, 0.70, 0.00, 0.05),
    "Ca": (0.00, -0.10, 0.65, 0.00, 0.04),
    "Ti": (-0.02, 0.05, 0.90, 0.00, 0.06),
    "Sc": (0.00, 0.00, 0.60, 0.00, 0.07),
    "Mn": (-0.05, 0.20, -0.40, 0.00, 0.05),
    "Y": (0.00, -0.15, -0.30, 0.08, 0.08),
    "Ba": (0.05, -0.25, -0.50, 0.12, 0.10),
    "Eu": (0.05, -0.25, 0.80, 0.00, 0.08),
}


def _stage(rng, n, probs=(0.52, 0.13, 0.23, 0.12)):
    return rng.choice(4, size=n, p=np.asarray(probs) / np.sum(probs))


def _track(rng, stage, feh):
    """Isochrone-like Teff, logg for each star's evolutionary stage.

    Metal-poor stars are hotter at fixed stage (lower opacity).
    Returns teff (n,), logg (n,).
    """
    n = len(stage)
    u = rng.random(n)
    teff = np.empty(n)
    logg = np.empty(n)
    d = stage == 0  # main sequence: mass-like u
    t = 4300.0 + 2400.0 * u[d] ** 0.8 - 120.0 * feh[d]
    teff[d] = t
    x = np.clip((t - 4300.0) / 2400.0, 0, 1)
    logg[d] = 4.65 - 0.45 * x**1.5 + rng.normal(0, 0.06, d.sum())
    s = stage == 1  # subgiants
    logg[s] = rng.uniform(3.5, 4.1, s.sum())
    teff[s] = 5000.0 + 700.0 * (logg[s] - 3.5) / 0.6 + rng.normal(0, 150, s.sum()) - 150.0 * feh[s]
    g = stage == 2  # red giant branch, more stars at high logg (faster evolution up the RGB)
    logg[g] = 3.5 - 2.7 * u[g] ** 1.5
    teff[g] = 4550.0 + 380.0 * (logg[g] - 2.5) - 150.0 * feh[g] + rng.normal(0, 70, g.sum())
    c = stage == 3  # red clump
    logg[c] = rng.normal(2.45, 0.1, c.sum())
    teff[c] = rng.normal(4750.0, 90.0, c.sum()) - 250.0 * feh[c]
    return np.clip(teff, 3700.0, 7000.0), np.clip(logg, 0.5, 4.9)


def _distance_scale(stage, logg):
    """Selection scale length (kpc) of heliocentric distances: luminous stars are seen farther."""
    return np.select(
        [stage == 0, stage == 1, stage == 3],
        [0.35, 0.6, 1.2],
        default=0.5 * 10.0 ** (0.4 * (3.5 - logg)),  # RGB: L ∝ 1/g at fixed mass and Teff
    ).clip(0.2, 6.0)


def _density_ratio(comp, x, y, z):
    """Component density relative to the solar neighbourhood value (capped at 1 by the caller)."""
    R = np.hypot(x, y)
    if comp == 0:
        return np.exp(-(R - R0_KPC) / 2.6 - np.abs(z) / 0.3 + Z_SUN_KPC / 0.3)
    if comp == 1:
        return np.exp(-(R - R0_KPC) / 2.0 - np.abs(z) / 0.9 + Z_SUN_KPC / 0.9)
    r = np.sqrt(R**2 + (z / 0.7) ** 2 + 1.0)
    return (r / np.sqrt(R0_KPC**2 + 1.0)) ** -3.5


def _positions(rng, comp, dscale):
    """Heliocentric (l, b, d) by rejection: isotropic directions, d ~ Gamma(3, dscale) (a d² volume
    term times a magnitude-limit cut-off), accepted with the component's density ratio."""
    n = len(comp)
    l = np.empty(n)
    b = np.empty(n)
    d = np.empty(n)
    todo = np.arange(n)
    for _ in range(200):
        if todo.size == 0:
            break
        m = todo.size
        ll = rng.uniform(0, 2 * np.pi, m)
        bb = np.arcsin(rng.uniform(-1, 1, m))
        dd = rng.gamma(3.0, dscale[todo])
        x = dd * np.cos(bb) * np.cos(ll) - R0_KPC
        y = dd * np.cos(bb) * np.sin(ll)
        z = dd * np.sin(bb) + Z_SUN_KPC
        p = np.zeros(m)
        for c in (0, 1, 2):
            sel = comp[todo] == c
            p[sel] = _density_ratio(c, x[sel], y[sel], z[sel])
        ok = rng.random(m) < np.minimum(p, 1.0)
        idx = todo[ok]
        l[idx], b[idx], d[idx] = ll[ok], bb[ok], dd[ok]
        todo = todo[~ok]
    if todo.size:  # practically never: place the rest at the proposal without rejection
        l[todo] = rng.uniform(0, 2 * np.pi, todo.size)
        b[todo] = np.arcsin(rng.uniform(-1, 1, todo.size))
        d[todo] = rng.gamma(3.0, dscale[todo])
    x = d * np.cos(b) * np.cos(l) - R0_KPC
    y = d * np.cos(b) * np.sin(l)
    z = d * np.sin(b) + Z_SUN_KPC
    return x, y, z


def _velocities(rng, comp, x, y):
    """Galactocentric Cartesian velocities (km/s) from each component's velocity ellipsoid.

    The discs' mean rotation at radius R is MWPotential2014's circular speed
    (:func:`cannonade.galaxy.dynamics.circular_speed`) less :data:`ASYMMETRIC_DRIFT_KMS`;
    the halo rotates at :data:`HALO_ROTATION_KMS`. Disc dispersions fall off outward.
    """
    n = len(comp)
    R = np.hypot(x, y)
    phi = np.arctan2(y, x)
    p = _DISPERSIONS[comp]
    disc = comp < 2
    mean_rot = np.full(n, HALO_ROTATION_KMS)
    if disc.any():
        mean_rot[disc] = circular_speed(R[disc]) - np.asarray(ASYMMETRIC_DRIFT_KMS)[comp[disc]]
    fall = np.where(disc, np.exp(-(R - R0_KPC) / 5.2), 1.0)
    vR = rng.normal(0, 1, n) * p[:, 0] * fall
    vrot = mean_rot + rng.normal(0, 1, n) * p[:, 1] * fall
    vz = rng.normal(0, 1, n) * p[:, 2] * fall
    # the disc rotates towards +y at the Sun (x = -R0) in the right-handed Galactocentric frame
    vx = vR * np.cos(phi) + vrot * np.sin(phi)
    vy = vR * np.sin(phi) - vrot * np.cos(phi)
    return vx, vy, vz


def _chemistry(rng, comp, R, xfe_scatter_scale=1.0):
    """[Fe/H], [α/Fe] and [X/Fe] (dict) for each star's component and radius; the [X/Fe] scatter
    about their relations is ``xfe_scatter_scale`` × :data:`XFE_RELATIONS`' (the same draws)."""
    n = len(comp)
    feh = np.select(
        [comp == 0, comp == 1],
        [rng.normal(-0.05 + THIN_DISC_FEH_GRADIENT * (R - R0_KPC), 0.20), rng.normal(-0.55, 0.25, n)],
        default=rng.normal(-1.5, 0.45, n),
    )
    feh = np.clip(feh, -2.5, 0.55)
    alpha = np.select(
        [comp == 0, comp == 1],
        [np.clip(0.02 - 0.08 * feh, -0.05, 0.15), np.clip(0.28 - 0.16 * (feh + 0.7) / 0.7, 0.10, 0.30)],
        default=np.where(rng.random(n) < 0.2, 0.12, 0.30),
    ) + rng.normal(0, 0.03, n)
    s_factor = rng.normal(0, 1, n) + np.where(comp == 0, 0.3, -0.3)
    xfe = {}
    for x, (a, b, c, dd, sig) in XFE_RELATIONS.items():
        xfe[x] = a + b * feh + c * alpha + dd * s_factor + rng.normal(0, sig * xfe_scatter_scale, n)
    return feh, alpha, xfe


def _broadening(rng, teff, logg):
    dwarf = logg > 3.8
    vb = np.where(dwarf, 4.0 + 8.0 * np.clip((teff - 5500.0) / 1000.0, 0, None), 5.5) + np.abs(rng.normal(0, 1.5, len(teff)))
    vmic = default_vmic(teff, logg) + rng.normal(0, 0.1, len(teff))
    return np.clip(vmic, 0.5, 3.0), np.clip(vb, 2.0, 40.0)


def _absolute_g(teff, logg, stage):
    """Absolute Gaia G magnitude from L = M (T/T_sun)^4 (g_sun/g) and a G-band bolometric correction."""
    mass = np.where(stage == 0, np.clip((teff / 5772.0) ** 1.6, 0.5, 1.6), 1.2)
    log_l = np.log10(mass) + 4.0 * np.log10(teff / 5772.0) - (logg - 4.438)
    dt = np.clip(teff, 3300, 8000) - 5772.0
    bc = 0.06 + 6.731e-5 * dt - 6.647e-8 * dt**2 + 2.859e-11 * dt**3 - 7.197e-15 * dt**4  # Andrae+2018
    return 4.74 - 2.5 * log_l + bc


def simulate_population(n, seed=0, rng=None, id_offset=0, population_fractions=(0.80, 0.15, 0.05),
                        cluster_fraction=0.04, binary_fraction=0.04, cluster_size=(8, 40),
                        stage_probs=(0.52, 0.13, 0.23, 0.12), xfe_scatter_scale=1.0):
    """Draw a mock stellar population.

    Parameters
    ----------
    n : int
        Number of stars.
    seed : int
        Seed (ignored when ``rng`` is given).
    rng : numpy Generator, optional
    id_offset : int
        ``star_id`` of the first star (chunked simulations keep ids unique).
    population_fractions : (3,) float
        Field thin disc, thick disc, halo.
    cluster_fraction : float
        Fraction of the stars that are open-cluster members.
    binary_fraction : float
        Fraction of the stars that are in wide binaries (both members counted).
    cluster_size : (int, int)
        Range of cluster membership.
    stage_probs : (4,) float
        Field fractions of dwarfs, subgiants, red-giant-branch and red-clump stars.
    xfe_scatter_scale : float
        The stars' [X/Fe] scatter about :data:`XFE_RELATIONS` in units of that table's σ (fitted to
        a catalogue, so they hold its measurement errors too); the apogee-galah preset uses
        :data:`INTRINSIC_XFE_SCATTER_SCALE`. 1 (default): the draws of earlier versions.

    Returns
    -------
    astropy.table.Table, n rows
        star_id, population, stage, cluster_id (-1 none), binary_id (-1 none), teff, logg,
        vmic, vbroad, fe_h, <x>_fe, alpha_fe, x, y, z (kpc), vx, vy, vz (km/s; Galactocentric),
        ra, dec (deg), distance (kpc), pmra, pmdec (mas/yr), rv (km/s), abs_g, a_g, g_mag.
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    n = int(n)
    n_cl = int(round(cluster_fraction * n))
    n_pairs = int(round(binary_fraction * n / 2.0))
    n_pairs = min(n_pairs, max(0, (n - n_cl) // 2))
    n_field = n - n_cl - 2 * n_pairs
    n_prim = n_field + n_pairs  # field stars incl. binary primaries

    comp = rng.choice(3, size=n_prim, p=np.asarray(population_fractions) / np.sum(population_fractions))
    stage = _stage(rng, n_prim, stage_probs)
    cl_of, n_clu = _cluster_membership(rng, n_cl, cluster_size)
    cl_stage = _stage(rng, n_cl, probs=(0.6, 0.1, 0.15, 0.15))

    # positions: field primaries and cluster centres (thin disc)
    logg_guess = np.where(stage == 2, rng.uniform(0.8, 3.5, n_prim), 2.5)
    x, y, z = _positions(rng, comp, _distance_scale(stage, logg_guess))
    cx, cy, cz = _positions(rng, np.zeros(n_clu, int), np.full(n_clu, 0.8))
    vx, vy, vz = _velocities(rng, comp, x, y)
    cvx, cvy, cvz = _velocities(rng, np.zeros(n_clu, int), cx, cy)

    feh, alpha, xfe = _chemistry(rng, comp, np.hypot(x, y), xfe_scatter_scale)
    cfeh, calpha, cxfe = _chemistry(rng, np.zeros(n_clu, int), np.hypot(cx, cy), xfe_scatter_scale)

    # --- assemble: field (incl. primaries) | secondaries | cluster members
    prim_idx = np.arange(n_field, n_prim)  # the last n_pairs field stars are binary primaries
    sec = slice(n_prim, n_prim + n_pairs)
    tab = _member_labels(comp, stage, cl_stage, prim_idx, cl_of, (feh, alpha, xfe), (cfeh, calpha, cxfe))
    teff, logg = _track(rng, tab["stage"], tab["fe_h"])
    _secondary_parameters(rng, teff, logg, stage[prim_idx] == 0, prim_idx, sec)
    phase = _member_phase_space(rng, (x, y, z, vx, vy, vz), (cx, cy, cz, cvx, cvy, cvz), prim_idx, cl_of)
    vmic, vbroad = _broadening(rng, teff, logg)

    out = Table()
    out["star_id"] = np.arange(id_offset, id_offset + n, dtype=np.int64)
    pop = np.array(POPULATIONS + ("cluster",))[tab["comp"]]
    pop[n_prim + n_pairs:] = "cluster"
    out["population"] = pop.astype("U7")
    out["stage"] = STAGES[tab["stage"]].astype("U8")
    out["cluster_id"] = np.concatenate([np.full(n_prim + n_pairs, -1), cl_of + id_offset]).astype(np.int64)
    bid = np.full(n, -1, np.int64)
    bid[prim_idx] = id_offset + prim_idx
    bid[sec] = id_offset + prim_idx
    out["binary_id"] = bid
    out["teff"] = teff
    out["logg"] = logg
    out["vmic"] = vmic
    out["vbroad"] = vbroad
    out["fe_h"] = tab["fe_h"]
    for el in ABUNDANCE_ELEMENTS:
        out[f"{el.lower()}_fe"] = tab[el]
    # GALAH's alpha_fe: mean of Mg, Si, Ca, Ti
    out["alpha_fe"] = 0.25 * (tab["Mg"] + tab["Si"] + tab["Ca"] + tab["Ti"])
    for name, values in zip(("x", "y", "z", "vx", "vy", "vz"), phase):
        out[name] = values
    _add_observables(out, tab["stage"])
    return out


def _cluster_membership(rng, n_cl, cluster_size):
    """Cluster index of each of ``n_cl`` members, (n_cl,) int, and the number of clusters."""
    sizes = []
    while sum(sizes) < n_cl:
        sizes.append(int(min(rng.integers(cluster_size[0], cluster_size[1] + 1), n_cl - sum(sizes))))
    return np.repeat(np.arange(len(sizes)), sizes).astype(int), len(sizes)


def _member_labels(comp, stage, cl_stage, prim_idx, cl_of, field, clusters):
    """Component, stage and chemistry of field stars | binary secondaries | cluster members.

    ``field`` and ``clusters`` are ([Fe/H], [α/Fe], {X: [X/Fe]}) of the field stars and
    of the cluster centres; secondaries copy their primary, members their cluster.
    Returns dict of (n,) arrays: comp, stage, fe_h, alpha and one per element of
    :data:`ABUNDANCE_ELEMENTS`.
    """
    feh, alpha, xfe = field
    cfeh, calpha, cxfe = clusters
    n_pairs, n_cl = len(prim_idx), len(cl_of)
    tab = {}
    tab["comp"] = np.concatenate([comp, comp[prim_idx], np.zeros(n_cl, int)])
    tab["stage"] = np.concatenate([stage, np.zeros(n_pairs, int), cl_stage])
    tab["fe_h"] = np.concatenate([feh, feh[prim_idx], cfeh[cl_of]])
    tab["alpha"] = np.concatenate([alpha, alpha[prim_idx], calpha[cl_of]])
    for el in ABUNDANCE_ELEMENTS:
        tab[el] = np.concatenate([xfe[el], xfe[el][prim_idx], cxfe[el][cl_of]])
    return tab


def _secondary_parameters(rng, teff, logg, primary_dwarf, prim_idx, sec):
    """Binary secondaries (rows ``sec`` of teff, logg, changed in place): cooler main-sequence companions."""
    n_pairs = len(prim_idx)
    pt = teff[prim_idx]
    teff[sec] = np.where(primary_dwarf, np.clip(pt - rng.uniform(150, 1200, n_pairs), 3800, None),
                         rng.uniform(4300, 5800, n_pairs))
    xx = np.clip((teff[sec] - 4300.0) / 2400.0, 0, 1)
    logg[sec] = 4.65 - 0.45 * xx**1.5 + rng.normal(0, 0.05, n_pairs)


def _member_phase_space(rng, field, centres, prim_idx, cl_of):
    """Galactocentric x, y, z [kpc], vx, vy, vz [km/s] of field | secondaries | cluster members.

    Secondaries of wide binaries sit 500-20000 AU (and >= 3 arcsec) from their primary
    and move at a few hundred m/s relative to it; cluster members lie within ~3 pc of
    their cluster's centre with a 0.7 km/s dispersion. ``field`` and ``centres`` are
    (x, y, z, vx, vy, vz) tuples of (n_prim,) and (n_clusters,) arrays.
    Returns a tuple of six (n,) arrays.
    """
    x, y, z = field[:3]
    n_pairs, n_cl = len(prim_idx), len(cl_of)
    dist_p = np.sqrt((x[prim_idx] + R0_KPC) ** 2 + y[prim_idx] ** 2 + (z[prim_idx] - Z_SUN_KPC) ** 2)
    sep_au = np.maximum(10 ** rng.uniform(2.7, 4.3, n_pairs), 2.0 * dist_p * 1000.0 * 1.5)
    u = rng.normal(size=(n_pairs, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    off = u * (sep_au * 4.848e-9)[:, None]  # AU -> kpc
    dv = rng.normal(0, 0.3, (n_pairs, 3))  # orbital motion: a few hundred m/s
    m_off = rng.normal(0, 0.003, (n_cl, 3))  # 3 pc cluster radius
    m_dv = rng.normal(0, 0.7, (n_cl, 3))
    out = []
    for k in range(6):
        pair_d, member_d = (off[:, k], m_off[:, k]) if k < 3 else (dv[:, k - 3], m_dv[:, k - 3])
        out.append(np.concatenate([field[k], field[k][prim_idx] + pair_d, centres[k][cl_of] + member_d]))
    return tuple(out)


def _add_observables(t, stage):
    """ra, dec, distance, proper motions, rv, and G magnitudes from the Galactocentric phase space."""
    import astropy.units as u
    from astropy.coordinates import ICRS, CartesianDifferential, CartesianRepresentation, SkyCoord

    rep = CartesianRepresentation(np.asarray(t["x"]) * u.kpc, np.asarray(t["y"]) * u.kpc, np.asarray(t["z"]) * u.kpc,
                                  differentials=CartesianDifferential(np.asarray(t["vx"]) * u.km / u.s,
                                                                      np.asarray(t["vy"]) * u.km / u.s,
                                                                      np.asarray(t["vz"]) * u.km / u.s))
    c = SkyCoord(galactocentric_frame().realize_frame(rep)).transform_to(ICRS())
    t["ra"] = c.ra.deg
    t["dec"] = c.dec.deg
    t["distance"] = c.distance.to_value(u.kpc)
    t["pmra"] = c.pm_ra_cosdec.to_value(u.mas / u.yr)
    t["pmdec"] = c.pm_dec.to_value(u.mas / u.yr)
    t["rv"] = c.radial_velocity.to_value(u.km / u.s)
    absg = _absolute_g(np.asarray(t["teff"]), np.asarray(t["logg"]), stage)
    d = np.asarray(t["distance"])
    sinb = np.abs(np.asarray(t["z"]) - Z_SUN_KPC) / np.maximum(d, 1e-6)
    # dust in a 100 pc thick layer, 0.6 mag/kpc in G in the plane
    a_g = 0.6 * np.minimum(d, 0.1 / np.maximum(sinb, 1e-3))
    t["abs_g"] = absg
    t["a_g"] = a_g
    t["g_mag"] = absg + 5.0 * np.log10(d * 100.0) + a_g


# ----------------------------------------------------------------------------- named clusters
@dataclass(frozen=True)
class NamedCluster:
    """A real open or globular cluster placed in the mock (apogee-galah preset).

    Attributes
    ----------
    name : str
        One token, as in the real member lists (``clusters_physical_logg.txt``: ``M67``, ``N6791`` ...).
    kind : {'open', 'globular'}
    fe_h, alpha_fe : float
        The members' common true [Fe/H] and [α/Fe] (= mean of [Mg, Si, Ca, Ti/Fe], as every mock star).
    ra, dec : float
        Centre (deg, ICRS).
    distance : float
        kpc.
    pmra, pmdec : float
        mas/yr.
    rv : float
        km/s.
    radius_pc, sigma_v : float
        Gaussian radius of the members' positions (pc) and their 3D velocity dispersion per axis (km/s).
    stage_probs : (4,) float
        Fractions of dwarfs, subgiants, red-giant-branch and red-clump members (the cluster's age).
    rgb_logg_min, rgb_logg_max : float
        Red-giant-branch members lie in this logg range (globular clusters: the bright giants the
        surveys reach at their distance).
    """

    name: str
    kind: str
    fe_h: float
    alpha_fe: float
    ra: float
    dec: float
    distance: float
    pmra: float
    pmdec: float
    rv: float
    radius_pc: float = 3.0
    sigma_v: float = 0.7
    stage_probs: tuple = (0.5, 0.1, 0.25, 0.15)
    rgb_logg_min: float = 0.8
    rgb_logg_max: float = 3.5


#: The apogee-galah preset's clusters: the open clusters and globular clusters of Nandakumar+2022
#: §4.1 that both surveys observed (NGC 2682 = M67, Ruprecht 147, Melotte 22 = Pleiades; NGC 104 = 47 Tuc,
#: NGC 6121 = M4). [Fe/H]: the literature values of their Tables 5 and 6 (Heiter+2014, VandenBerg+2013);
#: [α/Fe] ~0 for the open clusters and APOGEE-like +0.30 / +0.35 for the globulars; positions, distances,
#: proper motions and RVs of the real clusters (rounded).
NAMED_CLUSTERS = (
    NamedCluster("M67", "open", 0.00, 0.00, 132.846, 11.814, 0.86, -10.97, -2.94, 33.6,
                 stage_probs=(0.45, 0.10, 0.30, 0.15)),
    NamedCluster("Rup147", "open", 0.16, 0.00, 289.08, -16.33, 0.30, -0.94, -26.6, 41.0,
                 stage_probs=(0.75, 0.10, 0.10, 0.05)),
    NamedCluster("Melotte22", "open", -0.01, 0.00, 56.75, 24.12, 0.136, 19.99, -45.55, 5.7, radius_pc=2.0,
                 stage_probs=(1.0, 0.0, 0.0, 0.0)),
    NamedCluster("N104", "globular", -0.76, 0.30, 6.024, -72.081, 4.5, 5.25, -2.53, -17.2, radius_pc=5.0,
                 sigma_v=11.0, stage_probs=(0.0, 0.0, 0.8, 0.2), rgb_logg_max=2.4),
    NamedCluster("N6121", "globular", -1.18, 0.35, 245.897, -26.526, 1.85, -12.5, -19.0, 71.0, radius_pc=3.0,
                 sigma_v=4.0, stage_probs=(0.0, 0.05, 0.75, 0.2), rgb_logg_max=3.0),
)


def _cluster_centre(c):
    """Galactocentric (x, y, z, vx, vy, vz) of a :class:`NamedCluster` in the pipeline's frame."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    sc = SkyCoord(ra=c.ra * u.deg, dec=c.dec * u.deg, distance=c.distance * u.kpc, pm_ra_cosdec=c.pmra * u.mas / u.yr,
                  pm_dec=c.pmdec * u.mas / u.yr, radial_velocity=c.rv * u.km / u.s, frame="icrs")
    g = sc.transform_to(galactocentric_frame())
    return (g.x.to_value(u.kpc), g.y.to_value(u.kpc), g.z.to_value(u.kpc), g.v_x.to_value(u.km / u.s),
            g.v_y.to_value(u.km / u.s), g.v_z.to_value(u.km / u.s))


def _cluster_xfe(c):
    """The members' [X/Fe] (dict element -> float): the mean :data:`XFE_RELATIONS` at the cluster's
    [Fe/H] and [α/Fe], with Mg, Si, Ca and Ti shifted together so that their mean is ``alpha_fe`` exactly."""
    xfe = {x: a + b * c.fe_h + cc * c.alpha_fe for x, (a, b, cc, _, _) in XFE_RELATIONS.items()}
    shift = c.alpha_fe - 0.25 * (xfe["Mg"] + xfe["Si"] + xfe["Ca"] + xfe["Ti"])
    for x in ("Mg", "Si", "Ca", "Ti"):
        xfe[x] += shift
    return xfe


def named_cluster_members(counts, rng, id_offset=0, clusters=NAMED_CLUSTERS):
    """Members of named clusters: the same chemistry (no scatter), positions and motions around the real centre.

    Parameters
    ----------
    counts : (n_clusters,) int
        Members to draw per cluster of ``clusters``.
    rng : numpy Generator
    id_offset : int
        ``star_id`` of the first member.
    clusters : sequence of NamedCluster

    Returns
    -------
    astropy.table.Table
        The columns of :func:`simulate_population` plus ``cluster_name``; ``cluster_id`` is the
        cluster's index in ``clusters`` (the same in every chunk), ``population`` is ``'cluster'``.
    """
    counts = np.asarray(counts, int)
    n = int(counts.sum())
    of = np.repeat(np.arange(len(clusters)), counts)
    stage = np.zeros(n, int)
    for k, c in enumerate(clusters):
        sel = of == k
        stage[sel] = _stage(rng, int(sel.sum()), c.stage_probs)
    feh = np.array([clusters[k].fe_h for k in of], float)
    teff, logg = _track(rng, stage, feh)
    lo = np.array([clusters[k].rgb_logg_min for k in of], float)
    hi = np.array([clusters[k].rgb_logg_max for k in of], float)
    rgb = stage == 2
    new = lo + (logg - 0.8) * (hi - lo) / (3.5 - 0.8)  # the RGB track's logg range mapped onto [lo, hi]
    teff = np.where(rgb, np.clip(teff + 380.0 * (new - logg), 3700.0, 7000.0), teff)  # along the track's slope
    logg = np.where(rgb, new, logg)
    vmic, vbroad = _broadening(rng, teff, logg)
    centres = np.array([_cluster_centre(c) for c in clusters]).reshape(len(clusters), 6)
    radius = np.array([clusters[k].radius_pc for k in of], float) / 1000.0
    sig_v = np.array([clusters[k].sigma_v for k in of], float)
    off = rng.normal(0, 1, (n, 3)) * radius[:, None]
    dv = rng.normal(0, 1, (n, 3)) * sig_v[:, None]
    out = Table()
    out["star_id"] = np.arange(id_offset, id_offset + n, dtype=np.int64)
    out["population"] = np.full(n, "cluster", dtype="U7")
    out["stage"] = STAGES[stage].astype("U8")
    out["cluster_id"] = of.astype(np.int64)
    out["binary_id"] = np.full(n, -1, np.int64)
    out["teff"] = teff
    out["logg"] = logg
    out["vmic"] = vmic
    out["vbroad"] = vbroad
    out["fe_h"] = feh
    xfe = [_cluster_xfe(c) for c in clusters]
    for el in ABUNDANCE_ELEMENTS:
        out[f"{el.lower()}_fe"] = np.array([xfe[k][el] for k in of], float)
    out["alpha_fe"] = np.array([clusters[k].alpha_fe for k in of], float)
    for j, name in enumerate(("x", "y", "z", "vx", "vy", "vz")):
        out[name] = centres[of, j] + (off[:, j] if j < 3 else dv[:, j - 3])
    _add_observables(out, stage)
    out["cluster_name"] = np.array([clusters[k].name for k in of], dtype="U12")
    return out
