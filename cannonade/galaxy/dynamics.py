"""Galactocentric coordinates and orbital actions with Monte-Carlo errors.

Wheeler et al. 2020 §5.1 and Appendix D: every star with a distance, proper
motions and a radial velocity gets a Galactocentric position and velocity and
approximate actions (J_R, J_phi, J_z) from galpy's Stäckel fudge
(Binney 2012; Bovy & Rix 2013) in ``MWPotential2014``; uncertainties come from
20 Monte-Carlo resamples of distance and radial velocity.

Frame and conventions (also in ``docs/catalogue.md``)
-------------------------------------------------------
* Sun at Galactocentric (x, y, z) = (-8, 0, 0.025) kpc in astropy's right-handed
  :class:`~astropy.coordinates.Galactocentric` frame (Galactic centre at the
  origin, x from the Sun towards the centre, y towards l = 90°, z towards the
  NGP); Jurić et al. 2008 via Wheeler+2020.
* Solar velocity (U, V, W) = (11.1, 232.24, 7.25) km/s (Schönrich & Binney 2009
  peculiar motion plus v_c = 220 km/s), i.e. ``galcen_v_sun``; Wheeler+2020 write
  the same vector as (11.1, -232.24, 7.25) in a frame with the Sun at x = +8.
* Cylindrical output (R, phi, z, vR, vT, vz) follows galpy: phi = 0 at the Sun,
  phi increases in the direction of Galactic rotation (phi = atan2(y, -x)),
  vT = R dphi/dt, so **prograde disc stars have vT > 0 and Jphi = R vT > 0**
  (the Sun has vT = 232.24 km/s, Jphi = 1857.9 kpc km/s).
* Actions in kpc km/s, with galpy's ro = 8 kpc, vo = 220 km/s.
* One frame for the package: the mock surveys (:mod:`cannonade.simulate`) draw their
  kinematic truth in :func:`galactocentric_frame` and rotate their discs with
  :func:`circular_speed`, so truth checks of vT and Jphi are unbiased.

Unbound orbits (E - Phi(inf) >= 0; MWPotential2014 has a finite Phi(inf)) get
NaN actions and ``unbound = True``: galpy returns finite nonsense for them.

Action methods (``action_method`` of :func:`actions` and :func:`orbits`)
-------------------------------------------------------------------------
* ``"staeckel"`` (default): galpy's ``actionAngleStaeckel`` evaluated for every point, the
  fudge of Wheeler+2020 §5.1. The default stays the paper's method, so a catalogue's actions
  are the published recipe's to rounding.
* ``"staeckel_grid"`` (opt-in, faster): galpy's ``actionAngleStaeckelGrid``, the same fudge
  tabulated once per process on a grid in (Lz, E, psi) and interpolated (Bovy & Rix 2013), for
  the points inside the domain where that interpolation was measured to be reliable
  (:func:`in_grid_domain`: GRID_LZ_MIN_KPC_KMS <= Lz <= the grid's largest Lz and
  E <= GRID_E_MAX); every other point (low-Lz, retrograde and high-energy halo orbits) gets the
  direct fudge, bit for bit. Measured with ``benchmarks/bench_dynamics.py`` (mock of 90% disc,
  10% halo, 20 resamples; docs/catalogue.md has the tables): 5.3x less CPU than the direct
  fudge (2 685 against 452 stars/s at 100 000 stars), ~15x on disc stars alone, plus a ~16 s
  set-up per process. Grid - direct on disc stars: J_R median 3e-6 (p99 2.4e-4) relative,
  J_phi identical, J_z median 0.6% (p99 9%; up to ~2% median within 0.1 kpc of the plane, where
  the MC errors e_J_z are smallest: 3% of disc stars differ by > 0.3 e_J_z, 0.3% by > 1 e_J_z).
  The default stays the direct fudge: it is what Wheeler+2020 §5.1 computed, and near the plane
  its J_z is closer to orbit-integrated actions (0.4% median) than the grid's (2%).
"""

from __future__ import annotations

import contextlib
import functools
import logging

import numpy as np

from cannonade.exceptions import CatalogueError, ParameterError
from cannonade.execution.backends import choose_backend, get_backend, validate_workers
from cannonade.tables import colnames, float_column, is_pandas, require_columns
from cannonade.util import progress

log = logging.getLogger(__name__)

# --- the Sun and the potential (Wheeler+2020 §5.1) -------------------------------------
R0_KPC = 8.0  # Sun's distance from the Galactic centre projected on the plane (Jurić+2008)
Z_SUN_KPC = 0.025  # Sun's height above the plane (Jurić+2008)
V_SUN_KMS = (11.1, 232.24, 7.25)  # (U, V, W) in the right-handed astropy frame (Schönrich+2009)
RO_KPC = 8.0  # galpy distance unit
VO_KMS = 220.0  # galpy velocity unit (circular speed at ro in MWPotential2014)
DELTA = 0.4  # Stäckel focal distance, galpy natural units (0.4 ro = 3.2 kpc), fixed for all stars

# --- action methods ----------------------------------------------------------------------
#: Accepted values of ``action_method``; the first is the default (the paper's).
ACTION_METHODS = ("staeckel", "staeckel_grid")
# actionAngleStaeckelGrid sizes (measured on the benchmark mock, docs/catalogue.md). The Lz axis
# runs from 0.01 to GRID_RMAX vc(GRID_RMAX) (natural units): 3 ro = 24 kpc gives Lz <= 4645 kpc km/s,
# beyond the disc stars of a survey around the Sun, on a finer Lz step than galpy's default Rmax = 5
# (larger Lz: the direct fudge). The E and psi axes set the J_R interpolation error, Lz barely:
# nE = npsi = 80 gave J_R 5x-100x closer to the fudge than galpy's 25-50 (disc p99 |dJ_R|/J_R 6e-4
# instead of 4e-3 to 2e-2), nLz = 30 as good as 40-120. J_z keeps a ~0.6% median scatter whatever
# the sizes (unbiased, largest near z = 0): the grid tabulates z = 0 starting points, a systematic of
# the tabulated fudge, not of the interpolation. Set-up: 192 000 direct evaluations, ~15-25 s.
GRID_RMAX = 3.0
GRID_NE = 80
GRID_NPSI = 80
GRID_NLZ = 30
# The reliable domain: below this Lz (kpc km/s) and above this energy (galpy natural units,
# E = Phi + v^2/2; -0.25 is a circular orbit at R ~ 18 kpc) the grid's J_R and J_z are off by
# per cent to tens of per cent (radial halo orbits near Lz = 0, orbits reaching ~25 kpc and
# beyond, where the grid's energy axis ends), so those points take the direct fudge. Retrograde
# orbits (Lz < 0) are never on the grid.
GRID_LZ_MIN_KPC_KMS = 1000.0
GRID_E_MAX = -0.25

K_PM = 4.740470463533348  # km/s per (kpc mas/yr)

#: Output columns of :func:`orbits`, with units; each also gets an ``e_`` column.
DYNAMICS_COLUMNS = {
    "R": "kpc",
    "phi": "rad",
    "z": "kpc",
    "vR": "km / s",
    "vT": "km / s",
    "vz": "km / s",
    "JR": "kpc km / s",
    "Jphi": "kpc km / s",
    "Jz": "kpc km / s",
}
ACTION_COLUMNS = ("JR", "Jphi", "Jz")

# accepted names for the optional error columns (first found wins)
_ERROR_NAMES = {
    "distance": ("distance_err", "distance_error", "e_distance"),
    "radial_velocity": ("radial_velocity_err", "radial_velocity_error", "e_radial_velocity"),
    "pmra": ("pmra_error", "pmra_err", "e_pmra"),
    "pmdec": ("pmdec_error", "pmdec_err", "e_pmdec"),
}
#: A survey's median heliocentric distance above this (kpc) is a column in pc read as kpc.
MAX_MEDIAN_DISTANCE_KPC = 100.0

_REQUIRED = {
    "ra": "deg",
    "dec": "deg",
    "distance": "kpc",
    "pmra": "mas / yr",
    "pmdec": "mas / yr",
    "radial_velocity": "km / s",
}


# ----------------------------------------------------------------------------------------
# frame
# ----------------------------------------------------------------------------------------
def galactocentric_frame():
    """The astropy Galactocentric frame with Wheeler+2020's Sun.

    ``galcen_distance`` is set to sqrt(8² + 0.025²) kpc so that, after astropy's
    tilt for ``z_sun``, the Sun lands at exactly (-8, 0, 0.025) kpc.
    """
    import astropy.coordinates as coord
    import astropy.units as u

    return coord.Galactocentric(
        galcen_distance=np.hypot(R0_KPC, Z_SUN_KPC) * u.kpc,
        z_sun=Z_SUN_KPC * u.kpc,
        galcen_v_sun=coord.CartesianDifferential(list(V_SUN_KMS) * u.km / u.s),
        roll=0 * u.deg,
    )


@functools.lru_cache(maxsize=1)
def _icrs_to_galcen_affine():
    """(M, offset, v_sun): x_gc = M @ x_icrs + offset, v_gc = M @ v_icrs + v_sun.

    astropy's ICRS -> Galactocentric transform is affine and time independent, so we
    take its matrix once from astropy (transforming the origin and three unit
    vectors) and apply it with numpy: exact, and ~10x faster than SkyCoord on
    21 million evaluations.
    """
    import astropy.coordinates as coord
    import astropy.units as u

    pts = coord.ICRS(coord.CartesianRepresentation(np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) * u.kpc))
    g = pts.transform_to(galactocentric_frame()).cartesian.xyz.to_value(u.kpc)
    offset = g[:, 0].copy()
    M = g[:, 1:] - offset[:, None]
    return M, offset, np.array(V_SUN_KMS, dtype=float)


def heliocentric_cartesian(ra, dec, distance, pmra, pmdec, radial_velocity):
    """ICRS Cartesian position [kpc] and velocity [km/s] relative to the Sun.

    Parameters
    ----------
    ra, dec : (n,) float, deg
    distance : (n,) float, kpc
    pmra : (n,) float, mas/yr -- mu_alpha* = mu_alpha cos(dec), as in Gaia
    pmdec : (n,) float, mas/yr
    radial_velocity : (n,) float, km/s

    Returns
    -------
    pos, vel : (3, n) float
    """
    a = np.deg2rad(ra)
    d = np.deg2rad(dec)
    ca, sa, cd, sd = np.cos(a), np.sin(a), np.cos(d), np.sin(d)
    pos = np.stack([distance * cd * ca, distance * cd * sa, distance * sd])
    vt_a = K_PM * distance * pmra  # tangential speeds (km/s)
    vt_d = K_PM * distance * pmdec
    # v = v_r r_hat + v_a e_alpha + v_d e_delta
    vel = np.stack(
        [
            radial_velocity * cd * ca - vt_a * sa - vt_d * sd * ca,
            radial_velocity * cd * sa + vt_a * ca - vt_d * sd * sa,
            radial_velocity * sd + vt_d * cd,
        ]
    )
    return pos, vel


def _cylindrical(x, y, z, vx, vy, vz):
    """Right-handed Cartesian -> galpy-convention cylindrical (module docstring)."""
    R = np.hypot(x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.arctan2(y, -x)  # 0 at the Sun, increasing with Galactic rotation
        vR = (x * vx + y * vy) / R
        vT = -(x * vy - y * vx) / R  # minus: prograde rotation is clockwise seen from the NGP
    return R, phi, z, vR, vT, vz


def _galactocentric_arrays(ra, dec, distance, pmra, pmdec, radial_velocity):
    """Observables (n,) -> dict of x, y, z, vx, vy, vz, R, phi, vR, vT (kpc, rad, km/s)."""
    M, offset, vsun = _icrs_to_galcen_affine()
    pos, vel = heliocentric_cartesian(ra, dec, distance, pmra, pmdec, radial_velocity)
    x, y, z = M @ pos + offset[:, None]
    vx, vy, vz = M @ vel + vsun[:, None]
    R, phi, _, vR, vT, _ = _cylindrical(x, y, z, vx, vy, vz)
    return dict(x=x, y=y, z=z, vx=vx, vy=vy, vz=vz, R=R, phi=phi, vR=vR, vT=vT)


def _usable_distance(distance):
    """Distances [kpc] with every value that is negative or infinite set to NaN (missing).

    A negative distance (e.g. 1/parallax of a negative parallax) would put the star on the
    other side of the Sun, and an infinite one (1/parallax of a zero parallax) has no
    position: never a number here. 0 is the Sun's own position.
    """
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(distance) & (distance >= 0), distance, np.nan)


def check_distances(table, what="input table"):
    """Look at the whole ``distance`` column once: the unit, and the rows that cannot be used.

    Returns
    -------
    (n,) bool
        Rows whose distance is given but negative or infinite (their outputs will be NaN);
        a warning names the first of them.

    Raises
    ------
    CatalogueError
        The column's median is above ``MAX_MEDIAN_DISTANCE_KPC`` kpc: it holds parsecs (or
        another unit) without saying so; names the column, its median and the unit expected.
    """
    d = float_column(table, "distance", "kpc")
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(d) & ~(np.isfinite(d) & (d >= 0))
        good = np.isfinite(d) & (d >= 0)
    if good.any():
        median = float(np.median(d[good]))
        if median > MAX_MEDIAN_DISTANCE_KPC:
            raise CatalogueError(
                f"{what} column 'distance' has a median of {median:g} but is read in kpc (its unit: "
                f"{getattr(table['distance'], 'unit', None) or 'none given'}); a survey's stars are not "
                f"> {MAX_MEDIAN_DISTANCE_KPC:g} kpc away: parsecs? divide by 1000 or set the column's unit to 'pc'")
    if bad.any():
        idx = np.flatnonzero(bad)
        log.warning("%d of %d stars have a negative or infinite distance (rows %s%s): treated as missing, their dynamics "
                    "are NaN", idx.size, d.size, idx[:5].tolist(), "..." if idx.size > 5 else "")
    return bad


def galactocentric(table):
    """Galactocentric positions and velocities of the rows of ``table``.

    Parameters
    ----------
    table : astropy Table or pandas DataFrame
        Columns ra, dec [deg], distance [kpc], pmra, pmdec [mas/yr],
        radial_velocity [km/s] (converted if they carry astropy units; masked cells
        and survey sentinels <= -9998 are NaN).

    Returns
    -------
    astropy Table, n rows
        x, y, z [kpc] (right-handed, Sun at (-8, 0, 0.025)), vx, vy, vz [km/s],
        R [kpc], phi [rad], vR, vT [km/s] (galpy convention: vT > 0 prograde).
        NaN where any input is NaN, and where the distance is negative or infinite
        (missing: never mirrored through the Sun).

    Raises
    ------
    ColumnError
        A required column is missing.
    CatalogueError
        The distance column is evidently not in kpc (see :func:`check_distances`).
    """
    from astropy.table import Table

    require_columns(table, list(_REQUIRED), what="input table")
    check_distances(table)
    cols = [float_column(table, n, u) for n, u in _REQUIRED.items()]
    cols[2] = _usable_distance(cols[2])
    out = _galactocentric_arrays(*cols)
    units = dict(x="kpc", y="kpc", z="kpc", vx="km / s", vy="km / s", vz="km / s", R="kpc", phi="rad", vR="km / s", vT="km / s")
    t = Table()
    for name in ("x", "y", "z", "vx", "vy", "vz", "R", "phi", "vR", "vT"):
        t[name] = out[name]
        t[name].unit = units[name]
    return t


# ----------------------------------------------------------------------------------------
# actions
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _action_finder(delta=DELTA):
    from galpy.actionAngle import actionAngleStaeckel
    from galpy.potential import MWPotential2014

    return actionAngleStaeckel(pot=MWPotential2014, delta=delta, c=True)


@functools.lru_cache(maxsize=2)
def _grid_action_finder(delta=DELTA):
    """galpy's ``actionAngleStaeckelGrid`` for ``delta``, built once per process (~16 s, 192 000 direct evaluations).

    Sizes: the module constants GRID_RMAX, GRID_NE, GRID_NPSI, GRID_NLZ (why: next to them).
    """
    from galpy.actionAngle import actionAngleStaeckelGrid
    from galpy.potential import MWPotential2014

    log.info("building galpy's interpolated Staeckel grid (nLz=%d, nE=%d, npsi=%d; once per process)",
             GRID_NLZ, GRID_NE, GRID_NPSI)
    return actionAngleStaeckelGrid(pot=MWPotential2014, delta=delta, c=True, Rmax=GRID_RMAX,
                                   nE=GRID_NE, npsi=GRID_NPSI, nLz=GRID_NLZ, interpecc=False)


@functools.lru_cache(maxsize=1)
def grid_lz_max():
    """The largest Lz of the action grid, GRID_RMAX vc(GRID_RMAX), in kpc km/s (galpy's own bound)."""
    from galpy.potential import MWPotential2014, vcirc

    return float(GRID_RMAX * vcirc(MWPotential2014, GRID_RMAX)) * RO_KPC * VO_KMS


def prepare_action_method(method, delta=DELTA):
    """Build once in this process what ``method`` needs (the grid of "staeckel_grid"; nothing for
    "staeckel"), so that the first chunk, or forked worker processes, need not.

    Raises
    ------
    ParameterError
        ``method`` is not one of :data:`ACTION_METHODS`.
    """
    if validate_action_method(method) == "staeckel_grid":
        _grid_action_finder(float(delta))


def validate_action_method(method):
    """``method`` if it is one of :data:`ACTION_METHODS`.

    Raises
    ------
    ParameterError
        Any other value; the message names it and the accepted ones.
    """
    if not isinstance(method, str) or method not in ACTION_METHODS:
        raise ParameterError(f"action_method must be one of {', '.join(map(repr, ACTION_METHODS))}, got {method!r}")
    return method


def in_grid_domain(E, Lz):
    """Where the interpolated Stäckel grid's actions are reliable (module constants GRID_*).

    Parameters
    ----------
    E : (n,) float -- specific energy, galpy natural units (:func:`energy`)
    Lz : (n,) float, kpc km/s -- R vT

    Returns
    -------
    (n,) bool -- GRID_LZ_MIN_KPC_KMS <= Lz <= :func:`grid_lz_max` and E <= GRID_E_MAX
    """
    E, Lz = np.asarray(E, dtype=float), np.asarray(Lz, dtype=float)
    return (Lz >= GRID_LZ_MIN_KPC_KMS) & (Lz <= grid_lz_max()) & (E <= GRID_E_MAX)


def _staeckel(points, on_grid, delta):
    """Actions (natural units) of bound, finite ``points``: grid where ``on_grid``, direct elsewhere.

    Parameters
    ----------
    points : tuple of five (m,) float -- R, vR, vT, z, vz in galpy natural units
    on_grid : (m,) bool
    delta : float

    Returns
    -------
    jr, lz, jz : (m,) float, natural units
    """
    out = tuple(np.empty(points[0].shape[0]) for _ in range(3))
    for mask, finder in ((on_grid, _grid_action_finder), (~on_grid, _action_finder)):
        if mask.any():
            res = finder(float(delta))(*(p[mask] for p in points))
            for o, r in zip(out, res):
                o[mask] = np.asarray(r)
    return out


@functools.lru_cache(maxsize=1)
def potential_at_infinity():
    """Phi(r -> inf) of MWPotential2014 in galpy natural units (finite: ~1.3449).

    The power-law bulge with exponential cut-off has a non-zero constant in galpy's
    implementation, so the escape criterion is E - Phi(inf) >= 0, not E >= 0.
    """
    from galpy.potential import MWPotential2014, evaluatePotentials

    # the NFW halo's tail ~ ln(r)/r is below 1e-12 at r = 1e15 ro
    return float(evaluatePotentials(MWPotential2014, 1e15, 0.0))


def energy(R, z, vR, vT, vz):
    """Specific orbital energy in MWPotential2014 (galpy natural units).

    Parameters
    ----------
    R, z : (n,) float, kpc
    vR, vT, vz : (n,) float, km/s
    """
    from galpy.potential import MWPotential2014, evaluatePotentials

    Rn, zn = R / RO_KPC, z / RO_KPC
    phi_pot = evaluatePotentials(MWPotential2014, Rn, zn)
    return phi_pot + 0.5 * (vR**2 + vT**2 + vz**2) / VO_KMS**2


def circular_speed(R):
    """Circular speed of MWPotential2014 in the Galactic plane (galpy, ro = 8 kpc, vo = 220 km/s).

    Parameters
    ----------
    R : float or (n,) float, kpc

    Returns
    -------
    (n,) float, km/s -- 220 at R = 8 kpc
    """
    from galpy.potential import MWPotential2014, vcirc

    R = np.atleast_1d(np.asarray(R, dtype=float))
    return np.asarray(vcirc(MWPotential2014, R / RO_KPC), dtype=float) * VO_KMS


def actions(R, z, vR, vT, vz, delta=DELTA, method="staeckel"):
    """Stäckel-fudge actions in MWPotential2014 for arrays of phase-space points.

    One vectorised galpy call (compiled, ``c=True``, fixed focal distance ``delta``)
    on all bound, finite points; NaN for the others.

    Parameters
    ----------
    R, z : (n,) float, kpc
    vR, vT, vz : (n,) float, km/s (vT > 0 prograde)
    delta : float
        Stäckel focal distance in galpy natural units (units of ro = 8 kpc).
    method : {"staeckel", "staeckel_grid"}
        ``"staeckel"`` (default): the direct fudge for every point (Wheeler+2020 §5.1).
        ``"staeckel_grid"``: galpy's interpolated grid for the points of
        :func:`in_grid_domain`, the direct fudge for the others (module docstring).

    Returns
    -------
    JR, Jphi, Jz : (n,) float, kpc km/s -- NaN for unbound or non-finite points
    unbound : (n,) bool -- E - Phi(inf) >= 0 (False where the input is non-finite)

    Raises
    ------
    ParameterError
        ``method`` is not one of :data:`ACTION_METHODS`.
    """
    validate_action_method(method)
    R, z, vR, vT, vz = (np.asarray(a, dtype=float) for a in (R, z, vR, vT, vz))
    n = R.shape[0]
    JR = np.full(n, np.nan)
    Jphi = np.full(n, np.nan)
    Jz = np.full(n, np.nan)
    unbound = np.zeros(n, dtype=bool)
    finite = np.isfinite(R) & np.isfinite(z) & np.isfinite(vR) & np.isfinite(vT) & np.isfinite(vz) & (R > 0)
    if not finite.any():
        return JR, Jphi, Jz, unbound
    E = energy(R[finite], z[finite], vR[finite], vT[finite], vz[finite])
    ub = E - potential_at_infinity() >= 0.0
    unbound[np.flatnonzero(finite)[ub]] = True
    ok = finite & ~unbound
    if ok.any():
        points = (R[ok] / RO_KPC, vR[ok] / VO_KMS, vT[ok] / VO_KMS, z[ok] / RO_KPC, vz[ok] / VO_KMS)
        if method == "staeckel_grid":
            on_grid = in_grid_domain(E[~ub], R[ok] * vT[ok])
        else:
            on_grid = np.zeros(points[0].shape[0], dtype=bool)
        jr, lz, jz = _staeckel(points, on_grid, delta)
        scale = RO_KPC * VO_KMS
        JR[ok] = jr * scale
        Jphi[ok] = lz * scale
        Jz[ok] = jz * scale
    return JR, Jphi, Jz, unbound


# ----------------------------------------------------------------------------------------
# Monte-Carlo resampling
# ----------------------------------------------------------------------------------------
def _ndtr(x):
    from scipy.special import ndtr

    return ndtr(x)


def _ndtri(p):
    from scipy.special import ndtri

    return ndtri(p)


def split_normal_ppf(u, centre, sigma_lo, sigma_hi, lower=None):
    """Inverse CDF of a two-piece normal, optionally truncated below at ``lower``.

    Half a Gaussian of width ``sigma_lo`` below ``centre`` and half a Gaussian of
    width ``sigma_hi`` above it, each holding probability 1/2, so the draws' 16th,
    50th and 84th percentiles are exactly centre - sigma_lo, centre and
    centre + sigma_hi (matching catalogue distances quoted as median with 16/84th
    percentile bounds, e.g. Bailer-Jones r_lo/r_hi). A Gaussian when
    sigma_lo = sigma_hi. Sampling by inverse CDF from uniforms ``u`` keeps the
    random stream fixed (no rejection), so results do not depend on chunking.

    Parameters
    ----------
    u : (n, s) float in (0, 1)
    centre, sigma_lo, sigma_hi : (n,) float -- a sigma <= 0 or NaN means no scatter
        on that side (x = centre)
    lower : float or None -- truncation point (0 for distances): draws follow the
        distribution conditioned on x > lower

    Returns
    -------
    x : (n, s) float
    """
    m = np.asarray(centre, dtype=float)[:, None]
    s1 = np.asarray(sigma_lo, dtype=float)[:, None]
    s2 = np.asarray(sigma_hi, dtype=float)[:, None]
    s1 = np.where(np.isfinite(s1) & (s1 > 0), s1, 0.0)
    s2 = np.where(np.isfinite(s2) & (s2 > 0), s2, 0.0)
    if lower is not None:
        # CDF at the truncation point, F0 = Phi((lower - m) / sigma_side); u -> F0 + u (1 - F0)
        side = np.where(m > lower, s1, s2)
        with np.errstate(invalid="ignore", divide="ignore"):
            F0 = _ndtr((lower - m) / side)
        F0 = np.where(side > 0, np.nan_to_num(F0, nan=0.0), 0.0)
        u = F0 + u * (1.0 - F0)
    z = _ndtri(u)
    x = m + np.where(z < 0, s1, s2) * z
    if lower is not None:
        x = np.where(x > lower, x, np.nan)  # only a centre <= lower without scatter
    return x


def nan_percentile_rows(a, q):
    """Per-row percentiles ignoring NaN, vectorised (np.nanpercentile loops in Python).

    Parameters
    ----------
    a : (n, s) float
    q : sequence of float in [0, 100]

    Returns
    -------
    (len(q), n) float -- NaN for rows without finite values; linear interpolation
    as ``np.nanpercentile``'s default method.
    """
    a = np.sort(a, axis=1)  # NaN sort to the end
    k = np.sum(np.isfinite(a), axis=1)
    rows = np.arange(a.shape[0])
    out = []
    for qq in q:
        pos = (k - 1) * (qq / 100.0)
        i0 = np.clip(np.floor(pos).astype(int), 0, a.shape[1] - 1)
        i1 = np.clip(i0 + 1, 0, np.maximum(k - 1, 0))
        frac = pos - np.floor(pos)
        v = a[rows, i0] + frac * (a[rows, i1] - a[rows, i0])
        v = np.where(frac == 0, a[rows, i0], v)
        out.append(np.where(k > 0, v, np.nan))
    return np.array(out)


def _half_spread(samples):
    p16, p84 = nan_percentile_rows(samples, (16.0, 84.0))
    return 0.5 * (p84 - p16)


def _sample_uniforms(rng, n, n_samples, k=4):
    """(n, n_samples, k) uniforms in (0, 1), drawn row-major so the stream is
    independent of chunking (sequential draws concatenate)."""
    u = rng.random((n, n_samples, k))
    return np.clip(u, 1e-16, 1 - 1e-16)


def _read_inputs(table, rows):
    """Nominal values and error columns for ``rows`` as dict of float arrays."""
    d = {name: float_column(table, name, unit, rows) for name, unit in _REQUIRED.items()}
    d["distance"] = _usable_distance(d["distance"])  # < 0 or inf: missing, never mirrored through the Sun
    have = set(colnames(table))
    for name, cands in _ERROR_NAMES.items():
        col = next((c for c in cands if c in have), None)
        d[name + "_err"] = float_column(table, col, _REQUIRED[name], rows) if col else None
    if "distance_lo" in have and "distance_hi" in have:
        d["distance_lo"] = float_column(table, "distance_lo", "kpc", rows)
        d["distance_hi"] = float_column(table, "distance_hi", "kpc", rows)
    else:
        d["distance_lo"] = d["distance_hi"] = None
    d["pmra_pmdec_corr"] = float_column(table, "pmra_pmdec_corr", None, rows) if "pmra_pmdec_corr" in have else None
    return d


def _resample(d, u):
    """Monte-Carlo draws (n, s) of distance, RV, pmra, pmdec from uniforms u (n, s, 4)."""
    n = d["distance"].shape[0]
    nan = np.full(n, np.nan)
    # distance: split normal from (distance_lo, distance_hi) where both are finite,
    # else Gaussian with distance_err; truncated at 0 (distances are positive)
    dist = d["distance"]
    s_lo = s_hi = d["distance_err"] if d["distance_err"] is not None else nan
    if d["distance_lo"] is not None:
        has = np.isfinite(d["distance_lo"]) & np.isfinite(d["distance_hi"])
        s_lo = np.where(has, dist - d["distance_lo"], s_lo)
        s_hi = np.where(has, d["distance_hi"] - dist, s_hi)
    ds = split_normal_ppf(u[..., 0], dist, s_lo, s_hi, lower=0.0)
    e = d["radial_velocity_err"] if d["radial_velocity_err"] is not None else nan
    rv = split_normal_ppf(u[..., 1], d["radial_velocity"], e, e)
    # proper motions: bivariate normal when pmra_pmdec_corr is given
    zs_a = _ndtri(u[..., 2])
    zs_d = _ndtri(u[..., 3])
    ea = d["pmra_err"] if d["pmra_err"] is not None else nan
    ed = d["pmdec_err"] if d["pmdec_err"] is not None else nan
    ea = np.where(np.isfinite(ea) & (ea > 0), ea, 0.0)[:, None]
    ed = np.where(np.isfinite(ed) & (ed > 0), ed, 0.0)[:, None]
    rho = d["pmra_pmdec_corr"]
    rho = np.zeros((n, 1)) if rho is None else np.clip(np.nan_to_num(rho, nan=0.0), -1, 1)[:, None]
    pma = d["pmra"][:, None] + ea * zs_a
    pmd = d["pmdec"][:, None] + ed * (rho * zs_a + np.sqrt(1 - rho**2) * zs_d)
    return ds, rv, pma, pmd


def _orbits_chunk(d, u, delta, action_method="staeckel"):
    """Nominal + resampled dynamics for one chunk. Returns dict name -> (n,) arrays."""
    n = d["ra"].shape[0]
    n_samples = 0 if u is None else u.shape[1]
    if n_samples:
        ds, rv, pma, pmd = _resample(d, u)
        # column 0 = nominal input, 1.. = resamples
        dist = np.concatenate([d["distance"][:, None], ds], axis=1)
        rvs = np.concatenate([d["radial_velocity"][:, None], rv], axis=1)
        pmas = np.concatenate([d["pmra"][:, None], pma], axis=1)
        pmds = np.concatenate([d["pmdec"][:, None], pmd], axis=1)
    else:
        dist, rvs, pmas, pmds = (d[k][:, None] for k in ("distance", "radial_velocity", "pmra", "pmdec"))
    s1 = n_samples + 1
    ra = np.repeat(d["ra"], s1)
    dec = np.repeat(d["dec"], s1)
    g = _galactocentric_arrays(ra, dec, dist.ravel(), pmas.ravel(), pmds.ravel(), rvs.ravel())
    JR, Jphi, Jz, unbound = actions(g["R"], g["z"], g["vR"], g["vT"], g["vz"], delta=delta, method=action_method)
    vals = dict(R=g["R"], phi=g["phi"], z=g["z"], vR=g["vR"], vT=g["vT"], vz=g["vz"], JR=JR, Jphi=Jphi, Jz=Jz)
    out = {}
    unb = unbound.reshape(n, s1)
    out["unbound"] = unb[:, 0]
    for name, v in vals.items():
        v = v.reshape(n, s1)
        out[name] = v[:, 0].copy()
        if n_samples:
            samp = v[:, 1:]
            if name == "phi":  # spread about the nominal value, wrapped into (-pi, pi]
                samp = np.angle(np.exp(1j * (samp - v[:, :1])))
            err = _half_spread(samp)
        else:
            err = np.full(n, np.nan)
        if name in ACTION_COLUMNS:
            err = np.where(out["unbound"], np.nan, err)
        out["e_" + name] = err
    f_unb = unb[:, 1:].mean(axis=1) if n_samples else unb[:, 0].astype(float)
    out["f_unbound"] = np.where(np.isfinite(out["vR"]) | out["unbound"], f_unb, np.nan)  # NaN: no velocity
    return out


def orbits_chunk(k, d, u, delta, action_method="staeckel"):
    """Chunk ``k`` of :func:`orbits` (a picklable task for the execution backends): -> dict of (n,) arrays."""
    return _orbits_chunk(d, u, delta, action_method)


def orbits(table, n_samples=20, seed=0, chunk_size=50_000, delta=DELTA, show_progress=True, workers=1, scheduler="",
           action_method="staeckel"):
    """Galactocentric coordinates and Stäckel actions with Monte-Carlo errors.

    Wheeler+2020 §5.1: actions from galpy's Stäckel fudge in MWPotential2014, errors
    from ``n_samples`` resamples of distance and radial velocity (and proper motions
    when their errors are given).

    Parameters
    ----------
    table : astropy Table or pandas DataFrame, n rows
        Required: ra, dec [deg], distance [kpc], pmra (= mu_alpha cos dec), pmdec
        [mas/yr], radial_velocity [km/s]; columns carrying astropy units are converted.
        Optional errors (1 sigma): distance_err [kpc], radial_velocity_err [km/s],
        pmra_error, pmdec_error [mas/yr] (``_err``/``_error``/``e_`` spellings all
        accepted), pmra_pmdec_corr; distance_lo, distance_hi [kpc] (16th/84th
        percentile distances, e.g. Bailer-Jones r_lo/r_hi): where both are finite the
        distance is drawn from a split (two-piece) normal with half the draws below
        ``distance`` with sigma_lo = distance - distance_lo and half above with
        sigma_hi = distance_hi - distance (so the draws' 16/50/84th percentiles are
        distance_lo/distance/distance_hi), instead of a Gaussian with distance_err.
        Distance draws are truncated at 0. A missing or NaN error means that
        quantity is not resampled. Masked cells and survey sentinels (<= -9998, e.g.
        a -9999 radial velocity) are missing values (NaN), read through
        :func:`cannonade.tables.float_column`; so is a negative or infinite distance
        (e.g. 1/parallax of a parallax <= 0): that star's outputs are NaN (a warning names
        the rows), never a position mirrored through the Sun.
    n_samples : int
        Monte-Carlo resamples per star (Wheeler+2020: 20); 0 gives NaN e_ columns.
    seed : int
        Seed of the ``numpy.random.default_rng`` stream; results do not depend on
        ``chunk_size``.
    chunk_size : int
        Stars per chunk (each chunk makes chunk_size * (n_samples + 1) galpy
        evaluations); memory is flat in the number of stars.
    delta : float
        Stäckel focal distance in galpy natural units (ro = 8 kpc).
    show_progress : bool
    workers : int
        Chunks computed at once: 1 (default) in this process (galpy's own OpenMP threads);
        more, in that many worker processes of one thread each, or the workers of a dask
        cluster with ``scheduler`` (docs/scale.md). The results are the same: each chunk's
        resamples are drawn here, in chunk order, from the one ``seed`` stream.
    scheduler : str
        ``''``: no dask; ``'local'``: an embedded dask ``LocalCluster`` of ``workers``; else
        the address (or scheduler file) of a running dask scheduler.
    action_method : {"staeckel", "staeckel_grid"}
        ``"staeckel"`` (default, Wheeler+2020): the direct Stäckel fudge for every evaluation.
        ``"staeckel_grid"``: galpy's interpolated Stäckel grid inside its measured reliable
        domain, the direct fudge outside it (:func:`actions`, module docstring): 5-15x faster;
        J_R as the fudge's, J_z within ~0.6% (median), more near the plane, where it can exceed
        the small Monte-Carlo errors of a few per cent of the stars (docs/catalogue.md). The grid
        is built once per process (here, before the worker processes fork).

    Returns
    -------
    Same type as ``table`` (a shallow copy; the input is not modified) with columns
    R, phi, z [kpc, rad, kpc], vR, vT, vz [km/s], JR, Jphi, Jz [kpc km/s], their
    ``e_`` columns (half the 16-84 percentile spread of the resamples, NaN-aware),
    ``unbound`` (bool: nominal orbit has E - Phi(inf) >= 0; its actions are NaN)
    and ``f_unbound`` (fraction of resamples that are unbound). Central values are
    computed from the nominal inputs. Rows with a NaN input get NaN outputs (with
    only the RV missing, R, phi, z are still given). Existing columns with these
    names (e.g. a redshift called ``z``) are replaced, with a logged warning.

    Raises
    ------
    ColumnError
        A required column is missing.
    CatalogueError
        The distance column's median is above 100 kpc: not kpc (names the column and the
        unit; :func:`check_distances`).
    ParameterError
        ``chunk_size`` < 1, ``n_samples`` < 0 or an unknown ``action_method`` (named).
    """
    validate_action_method(action_method)
    require_columns(table, list(_REQUIRED), what="input table")
    n = len(table)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ParameterError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    try:
        ok = not isinstance(n_samples, bool) and int(n_samples) == n_samples and n_samples >= 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ParameterError(f"n_samples must be an integer >= 0, got {n_samples!r}")
    check_distances(table)
    n_samples = int(n_samples)
    rng = np.random.default_rng(seed)
    names = list(DYNAMICS_COLUMNS)
    result = {k: np.full(n, np.nan) for k in names + ["e_" + k for k in names] + ["f_unbound"]}
    result["unbound"] = np.zeros(n, dtype=bool)
    starts = list(range(0, n, chunk_size))

    def tasks():
        # drawn here, in chunk order, as the backend asks for them: the one stream whatever runs the
        # chunks (and the draws of a chunk travel with it, at most the in-flight bound ahead)
        for k, start in enumerate(starts):
            d = _read_inputs(table, slice(start, min(start + chunk_size, n)))
            u = _sample_uniforms(rng, d["ra"].shape[0], n_samples) if n_samples else None
            yield k, (d, u, delta, action_method)

    one = validate_workers(workers) == 1 or len(starts) <= 1
    name, options = choose_backend(scheduler, default="serial" if one else "process")
    if n and name != "dask":
        prepare_action_method(action_method, delta)  # the grid built here once: forked workers inherit it
    if name == "serial":  # this process, galpy's OpenMP threads as the environment sets them
        backend, chunks = contextlib.nullcontext(), ((k, orbits_chunk(k, *args)) for k, args in tasks())
    else:
        backend = get_backend(name, workers=min(int(workers), max(1, len(starts))), **options)
        chunks = None
    bar = progress(total=n, desc="orbits", unit="star", disable=None if show_progress else True)
    try:
        with backend:
            for k, out in chunks if chunks is not None else backend.imap_unordered(orbits_chunk, tasks()):
                rows = slice(starts[k], min(starts[k] + chunk_size, n))
                for key, v in out.items():
                    result[key][rows] = v
                bar.update(rows.stop - rows.start)
    finally:
        bar.close()
    n_unb = int(result["unbound"].sum())
    if n_unb:
        log.info("orbits: %d of %d stars unbound (actions set to NaN)", n_unb, n)
    return _attach(table, result)


def _attach(table, result):
    order = []
    for k in DYNAMICS_COLUMNS:
        order.append(k)
    order += ["e_" + k for k in DYNAMICS_COLUMNS] + ["unbound", "f_unbound"]
    if is_pandas(table):
        out = table.copy(deep=False)
        clash = [k for k in order if k in out.columns]
        if clash:
            log.warning("orbits: replacing existing column(s) %s with the dynamics output", clash)
        for k in order:
            out[k] = result[k]
        return out
    out = table.copy(copy_data=False)
    clash = [k for k in order if k in out.colnames]
    if clash:  # e.g. a survey redshift column called 'z'
        log.warning("orbits: replacing existing column(s) %s with the dynamics output", clash)
    for k in order:
        if k in out.colnames:
            out.remove_column(k)
        out[k] = result[k]
        unit = DYNAMICS_COLUMNS.get(k[2:] if k.startswith("e_") else k)
        if unit is not None:
            out[k].unit = unit
    return out
