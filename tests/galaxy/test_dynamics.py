"""Galactocentric frame, Stäckel actions, unbound orbits and Monte-Carlo errors."""

import re

import astropy.coordinates as coord
import astropy.units as u
import numpy as np
import pytest
from astropy.table import Table

from cannonade.galaxy.kinematics import add_dynamics
from cannonade.galaxy.dynamics import (
    DYNAMICS_COLUMNS,
    galactocentric,
    galactocentric_frame,
    nan_percentile_rows,
    orbits,
    potential_at_infinity,
    split_normal_ppf,
)

RO, VO = 8.0, 220.0

# --- the independent truth: heliocentric observables from Galactocentric phase space, by hand ---
# Nothing below uses astropy or the code under test: the frame is rebuilt from its defining
# numbers. IAU Galactic axes in J2000 (Hipparcos catalogue vol. 1 §1.5.3): the north Galactic
# pole at (RA, Dec) = (192.85948°, 27.12825°), the north celestial pole at Galactic longitude
# 122.93192°. Sun (Wheeler+2020 §5.1): R0 = 8 kpc, 25 pc above the plane, (U, V, W) =
# (11.1, 232.24, 7.25) km/s. astropy's Galactocentric x axis points at its Galactic-centre
# position (266.4051°, -28.936175°), which is within 1e-4 deg of (l, b) = (0, 0), and its z axis
# is rolled 1.5e-6 rad away from the IAU pole: the two constructions agree to ~3e-6 rad, i.e.
# < 1e-4 kpc in position and < 2e-3 km/s in velocity for the stars used here.
RA_NGP, DEC_NGP, L_NCP = 192.85948, 27.12825, 122.93192  # deg
R0_SUN, Z_SUN = 8.0, 0.025  # kpc
V_SUN = np.array([11.1, 232.24, 7.25])  # km/s
K_AU_PER_YR = 149_597_870.7 / (365.25 * 86400.0)  # km/s per (kpc mas/yr) = 1 au per Julian year
FRAME_ATOL = dict(x=1e-4, y=1e-4, z=1e-4, R=1e-4, phi=1e-5, vx=2e-3, vy=2e-3, vz=2e-3, vR=2e-3, vT=2e-3)


def _unit_vector(ra_deg, dec_deg):
    a, d = np.radians(ra_deg), np.radians(dec_deg)
    return np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def icrs_to_galactic():
    """(3, 3) rotation ICRS -> Galactic: rows are the Galactic x (l = b = 0), y (l = 90°) and
    z (NGP) axes as ICRS unit vectors, from the pole and the pole's longitude."""
    n = _unit_vector(RA_NGP, DEC_NGP)
    ncp = np.array([0.0, 0.0, 1.0])
    p = ncp - (ncp @ n) * n  # the celestial pole projected on the Galactic plane: at l = L_NCP
    p /= np.linalg.norm(p)
    q = np.cross(n, p)  # l = L_NCP + 90°
    lon = np.radians(L_NCP)
    x = np.cos(lon) * p - np.sin(lon) * q  # l = 0
    return np.array([x, np.cross(n, x), n])


def sun_height_tilt():
    """(3, 3) rotation about y taking the Sun from (-d, 0, 0) to (-R0, 0, z_sun), d = hypot(R0, z_sun)."""
    s = Z_SUN / np.hypot(R0_SUN, Z_SUN)
    c = np.sqrt(1.0 - s**2)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def observables(R, phi, z, vR, vT, vz):
    """Heliocentric ICRS observables (ra, dec [deg], distance [kpc], pmra = mu_a cos dec, pmdec
    [mas/yr], radial_velocity [km/s]) of Galactocentric phase-space points (n,) given in the output
    convention (phi = 0 at the Sun, vT > 0 prograde), by hand-written geometry."""
    R, phi, z, vR, vT, vz = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (R, phi, z, vR, vT, vz))
    R, phi, z, vR, vT, vz = np.broadcast_arrays(R, phi, z, vR, vT, vz)
    pos = np.array([-R * np.cos(phi), R * np.sin(phi), z])  # right-handed, Sun at x < 0
    vel = np.array([-vR * np.cos(phi) + vT * np.sin(phi), vR * np.sin(phi) + vT * np.cos(phi), vz])
    H = sun_height_tilt()
    A = icrs_to_galactic()
    # heliocentric, Galactic axes: undo the tilt, move the origin from the centre to the Sun
    pos_gal = H.T @ pos + np.array([np.hypot(R0_SUN, Z_SUN), 0.0, 0.0])[:, None]
    vel_gal = H.T @ (vel - V_SUN[:, None])
    r, v = A.T @ pos_gal, A.T @ vel_gal  # ICRS
    d = np.linalg.norm(r, axis=0)
    ra = np.arctan2(r[1], r[0]) % (2 * np.pi)
    dec = np.arcsin(r[2] / d)
    e_ra = np.array([-np.sin(ra), np.cos(ra), np.zeros_like(ra)])
    e_dec = np.array([-np.sin(dec) * np.cos(ra), -np.sin(dec) * np.sin(ra), np.cos(dec)])
    return Table(dict(
        ra=np.degrees(ra), dec=np.degrees(dec), distance=d,
        pmra=np.sum(v * e_ra, axis=0) / (K_AU_PER_YR * d), pmdec=np.sum(v * e_dec, axis=0) / (K_AU_PER_YR * d),
        radial_velocity=np.sum(v * r, axis=0) / d,
    ))


def galpy_orbit(t):
    from galpy.orbit import Orbit

    vxvv = np.array([t["ra"], t["dec"], t["distance"], t["pmra"], t["pmdec"], t["radial_velocity"]]).T
    # galpy's solarmotion is [-U, V, W] relative to vo: (11.1, 232.24 - 220, 7.25)
    return Orbit(vxvv, radec=True, ro=RO, vo=VO, zo=0.025, solarmotion=[-11.1, 12.24, 7.25])


@pytest.fixture(scope="module")
def disc_and_halo():
    rng = np.random.default_rng(42)
    nd, nh = 12, 12
    R = np.r_[rng.uniform(5, 11, nd), rng.uniform(4, 15, nh)]
    phi = np.r_[rng.uniform(-0.3, 0.3, nd), rng.uniform(-0.8, 0.8, nh)]
    z = np.r_[rng.normal(0, 0.3, nd), rng.uniform(-5, 5, nh)]
    vR = np.r_[rng.normal(0, 35, nd), rng.normal(0, 140, nh)]
    vT = np.r_[rng.normal(215, 20, nd), rng.normal(20, 100, nh)]
    vz = np.r_[rng.normal(0, 25, nd), rng.normal(0, 100, nh)]
    return (R, phi, z, vR, vT, vz), observables(R, phi, z, vR, vT, vz)


def test_sun_in_the_astropy_frame_and_output():
    sun = coord.SkyCoord(ra=0 * u.deg, dec=0 * u.deg, distance=0 * u.kpc).transform_to(galactocentric_frame())
    np.testing.assert_allclose(sun.cartesian.xyz.to_value(u.kpc), [-8.0, 0.0, 0.025], atol=1e-12)
    t = Table(dict(ra=[0.0], dec=[0.0], distance=[0.0], pmra=[0.0], pmdec=[0.0], radial_velocity=[0.0]))
    g = galactocentric(t)
    np.testing.assert_allclose([g["x"][0], g["y"][0], g["z"][0]], [-8.0, 0.0, 0.025], atol=1e-12)
    np.testing.assert_allclose([g["vx"][0], g["vy"][0], g["vz"][0]], [11.1, 232.24, 7.25], atol=1e-9)
    o = orbits(t, n_samples=0)
    # R = 8, phi = 0; moving towards the centre (vR < 0) and prograde (vT, Jphi > 0)
    np.testing.assert_allclose([o["R"][0], o["phi"][0], o["z"][0]], [8.0, 0.0, 0.025], atol=1e-12)
    np.testing.assert_allclose([o["vR"][0], o["vT"][0], o["vz"][0]], [-11.1, 232.24, 7.25], atol=1e-9)
    np.testing.assert_allclose(o["Jphi"][0], 8.0 * 232.24, rtol=1e-12)


def test_numpy_transform_matches_astropy():
    rng = np.random.default_rng(3)
    n = 200
    t = Table(dict(
        ra=rng.uniform(0, 360, n), dec=np.degrees(np.arcsin(rng.uniform(-1, 1, n))), distance=rng.uniform(0.05, 30, n),
        pmra=rng.normal(0, 10, n), pmdec=rng.normal(0, 10, n), radial_velocity=rng.normal(0, 150, n),
    ))
    c = coord.SkyCoord(
        ra=t["ra"] * u.deg, dec=t["dec"] * u.deg, distance=t["distance"] * u.kpc,
        pm_ra_cosdec=t["pmra"] * u.mas / u.yr, pm_dec=t["pmdec"] * u.mas / u.yr,
        radial_velocity=t["radial_velocity"] * u.km / u.s,
    ).transform_to(galactocentric_frame())
    g = galactocentric(t)
    for ours, theirs, tol in (("x", c.x, 1e-9), ("y", c.y, 1e-9), ("z", c.z, 1e-9), ("vx", c.v_x, 1e-8), ("vy", c.v_y, 1e-8), ("vz", c.v_z, 1e-8)):
        np.testing.assert_allclose(g[ours], theirs.value, atol=tol, err_msg=ours)


def test_round_trip_of_galactocentric_truth(disc_and_halo):
    """The truth's observables come from hand-written geometry (``observables``), not from the
    frame under test: the recovered Galactocentric coordinates check the frame itself."""
    truth, t = disc_and_halo
    R, phi, z, vR, vT, vz = truth
    g = galactocentric(t)
    cart = dict(x=-R * np.cos(phi), y=R * np.sin(phi), z=z, vx=-vR * np.cos(phi) + vT * np.sin(phi),
                vy=vR * np.sin(phi) + vT * np.cos(phi), vz=vz)
    for name, val in cart.items():
        np.testing.assert_allclose(g[name], val, rtol=0, atol=FRAME_ATOL[name], err_msg=name)
    o = orbits(t, n_samples=0)
    for name, val in zip(("R", "phi", "z", "vR", "vT", "vz"), truth):
        np.testing.assert_allclose(o[name], val, rtol=0, atol=FRAME_ATOL.get(name, 2e-3), err_msg=name)


def test_hand_written_galactic_axes_match_astropy():
    """The test's own ICRS -> Galactic matrix is the IAU one (astropy adds only the FK5 frame bias)."""
    icrs = coord.SkyCoord(x=[1.0, 0.0, 0.0], y=[0.0, 1.0, 0.0], z=[0.0, 0.0, 1.0], representation_type="cartesian", frame="icrs")
    gal = icrs.galactic.cartesian.xyz.value  # column j = ICRS axis j in Galactic coordinates
    np.testing.assert_allclose(icrs_to_galactic(), gal, atol=2e-7)


def test_circular_orbit_has_zero_radial_and_vertical_action():
    from galpy.potential import MWPotential2014, vcirc

    R = np.array([5.0, 8.5, 12.0])
    vc = np.array([vcirc(MWPotential2014, r / RO) for r in R]) * VO
    t = observables(R, [0.3, -0.2, 0.1], 0.0, 0.0, vc, 0.0)
    o = orbits(t, n_samples=0)
    # a typical thin-disc star has J_R ~ 10-50, J_z ~ 2-10 kpc km/s
    assert np.all(np.abs(o["JR"]) < 0.05), o["JR"]
    assert np.all(np.abs(o["Jz"]) < 0.05), o["Jz"]
    np.testing.assert_allclose(o["Jphi"], R * vc, rtol=1e-5)  # hand-built truth: frames agree to ~3e-6 rad
    assert not o["unbound"].any()


def test_actions_agree_with_galpy_orbit(disc_and_halo):
    from galpy.potential import MWPotential2014

    _, t = disc_and_halo
    o = orbits(t, n_samples=0)
    orb = galpy_orbit(t)
    kw = dict(pot=MWPotential2014, type="staeckel", delta=0.4, c=True)
    # galpy converts the observables with its own frame code: this checks our frame too
    np.testing.assert_allclose(o["R"], orb.R(), rtol=1e-4)
    np.testing.assert_allclose(o["vT"], orb.vT(), rtol=1e-3, atol=0.05)
    ref = {"JR": orb.jr(**kw), "Jphi": orb.jp(**kw), "Jz": orb.jz(**kw)}
    assert np.all(np.isfinite(o["JR"])) and not o["unbound"].any()
    for name, val in ref.items():
        np.testing.assert_allclose(o[name], val, rtol=0.01, atol=0.05, err_msg=name)
    # the sample really spans disc and halo orbits, prograde and retrograde
    assert o["Jz"][:12].max() < 30 < o["Jz"][12:].max()
    assert (o["Jphi"] < 0).any() and (o["Jphi"] > 1000).any()


def test_unbound_star_flagged_with_nan_actions():
    t = observables([8.5, 8.5], [0.1, 0.1], [0.1, 0.1], [10.0, 0.0], [220.0, 700.0], [5.0, 0.0])
    o = orbits(t, n_samples=5)
    assert list(o["unbound"]) == [False, True]
    for name in ("JR", "Jphi", "Jz", "e_JR", "e_Jphi", "e_Jz"):
        assert np.isfinite(o[name][0]), name
        assert np.isnan(o[name][1]), name
    assert np.isfinite(o["vT"][1]) and o["f_unbound"][1] == 1.0 and o["f_unbound"][0] == 0.0
    assert 1.0 < potential_at_infinity() < 2.0  # finite and positive for MWPotential2014 in galpy


def test_nan_inputs_give_nan_outputs_not_errors():
    t = observables([8.5] * 3, [0.1] * 3, [0.1] * 3, [10.0] * 3, [220.0] * 3, [5.0] * 3)
    t["distance"][1] = np.nan  # no Gaia match
    t["radial_velocity"][2] = np.nan  # no RV
    t["distance_err"] = [0.1, 0.1, 0.1]
    t["radial_velocity_err"] = [np.nan, 5.0, 5.0]
    o = orbits(t, n_samples=4)
    assert np.isfinite(o["JR"][0]) and o["e_vz"][0] >= 0
    for name in list(DYNAMICS_COLUMNS) + ["e_JR", "e_R"]:
        assert np.isnan(o[name][1]), name
    # without an RV the position is still known; velocities and actions are not
    for name in ("R", "phi", "z", "e_R"):
        assert np.isfinite(o[name][2]), name
    for name in ("vR", "vT", "vz", "JR", "Jphi", "Jz", "e_JR", "e_vT"):
        assert np.isnan(o[name][2]), name
    assert not o["unbound"].any()
    assert o["f_unbound"][0] == 0.0 and np.isnan(o["f_unbound"][1]) and np.isnan(o["f_unbound"][2])


def test_monte_carlo_errors_recover_input_uncertainty():
    # a star towards the north Galactic pole: vz is (almost) its radial velocity,
    # so e_vz must recover the RV error; no distance/PM error -> e_R == 0
    ngp = coord.SkyCoord(l=0 * u.deg, b=90 * u.deg, frame="galactic").icrs
    t = Table(dict(ra=[ngp.ra.deg], dec=[ngp.dec.deg], distance=[1.0], pmra=[1.0], pmdec=[-2.0], radial_velocity=[-10.0]))
    t["radial_velocity_err"] = [7.0]
    o = orbits(t, n_samples=2000, seed=1)
    np.testing.assert_allclose(o["e_vz"][0], 7.0, rtol=0.06)
    assert o["e_R"][0] == 0.0 and o["e_phi"][0] == 0.0
    # the central values are the nominal ones, not the median of the draws
    nominal = orbits(t, n_samples=0)
    np.testing.assert_allclose(o["vz"][0], nominal["vz"][0], rtol=1e-12)
    assert abs(o["vz"][0] - (-2.7785)) < 1e-3  # -10 km/s RV + W_sun, rotated by the tiny z_sun tilt


def test_seed_and_chunking_reproducible(disc_and_halo):
    _, t = disc_and_halo
    t = t.copy()
    t["distance_err"] = 0.1 * t["distance"]
    t["radial_velocity_err"] = 5.0
    t["pmra_error"] = 0.05
    t["pmdec_error"] = 0.05
    a = orbits(t, n_samples=8, seed=7)
    b = orbits(t, n_samples=8, seed=7, chunk_size=5)
    c = orbits(t, n_samples=8, seed=8)
    for name in ("e_JR", "e_vT", "e_z"):
        np.testing.assert_array_equal(a[name], b[name])
        assert np.all(a[name] > 0)
        assert not np.array_equal(a[name], c[name])
    np.testing.assert_array_equal(a["JR"], c["JR"])  # central values do not depend on the draws


@pytest.mark.parametrize("where", [dict(workers=2), dict(workers=2, scheduler="local")])
def test_orbit_chunks_on_processes_or_dask_give_the_same_results(disc_and_halo, where):
    """The chunks' resamples are drawn in chunk order in the calling process, so a process pool or
    a dask cluster gives the serial results (each worker runs galpy with one thread)."""
    if "scheduler" in where:
        pytest.importorskip("distributed")
    _, t = disc_and_halo
    t = t.copy()
    t["distance_err"] = 0.1 * t["distance"]
    t["radial_velocity_err"] = 5.0
    a = orbits(t, n_samples=4, seed=3, chunk_size=7, show_progress=False)
    b = orbits(t, n_samples=4, seed=3, chunk_size=7, show_progress=False, **where)
    for name in ("R", "JR", "Jz", "e_JR", "e_Jz", "e_vT", "f_unbound"):
        np.testing.assert_allclose(np.asarray(b[name], float), np.asarray(a[name], float), rtol=1e-12, atol=0,
                                   equal_nan=True, err_msg=name)
    assert np.array_equal(np.asarray(a["unbound"]), np.asarray(b["unbound"]))


def test_split_normal_draws_match_quantiles():
    rng = np.random.default_rng(0)
    uu = rng.random((1, 200_000))
    x = split_normal_ppf(uu, np.array([2.0]), np.array([0.3]), np.array([0.8]), lower=0.0)
    p16, p50, p84 = np.percentile(x, [16, 50, 84])
    assert abs(p50 - 2.0) < 0.01 and abs(p16 - 1.7) < 0.01 and abs(p84 - 2.8) < 0.015
    # truncation: a 1 +- 1 kpc distance never goes negative
    y = split_normal_ppf(uu, np.array([1.0]), np.array([1.0]), np.array([1.0]), lower=0.0)
    assert np.all(y > 0) and np.all(np.isfinite(y))


def test_split_distance_used_when_bounds_given():
    t = observables([8.5], [0.1], [0.5], [10.0], [220.0], [5.0])
    d = t["distance"][0]
    t["distance_lo"] = [d - 0.01 * d]
    t["distance_hi"] = [d + 0.3 * d]
    t["distance_err"] = [0.0]  # ignored where lo/hi are finite
    o = orbits(t, n_samples=50, seed=0)
    assert o["e_R"][0] > 0 and o["e_z"][0] > 0


def test_nan_percentile_rows_matches_numpy():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(50, 21))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[3] = np.nan
    ours = nan_percentile_rows(a, (16, 84))
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = np.nanpercentile(a, (16, 84), axis=1)
    np.testing.assert_allclose(ours, ref, equal_nan=True)


def test_pandas_and_units():
    pd = pytest.importorskip("pandas")
    t = observables([8.5, 7.0], [0.1, -0.1], [0.2, -0.5], [10.0, -30.0], [220.0, 190.0], [5.0, 20.0])
    ref = orbits(t, n_samples=0)
    df = orbits(t.to_pandas(), n_samples=0)
    assert isinstance(df, pd.DataFrame)
    np.testing.assert_allclose(df["Jz"], ref["Jz"])
    tq = t.copy()
    tq["distance"] = tq["distance"] * 1000.0
    tq["distance"].unit = u.pc  # converted to kpc
    np.testing.assert_allclose(orbits(tq, n_samples=0)["JR"], ref["JR"], rtol=1e-10)
    assert ref["JR"].unit == u.kpc * u.km / u.s and "JR" not in t.colnames  # input untouched


def test_missing_column_is_named():
    from cannonade.exceptions import ColumnError

    with pytest.raises(ColumnError, match="radial_velocity"):
        orbits(Table(dict(ra=[1.0], dec=[1.0], distance=[1.0], pmra=[1.0], pmdec=[1.0])))


def test_misspelt_column_gets_a_suggestion():
    from cannonade.exceptions import ColumnError

    t = observables([8.5], [0.1], [0.1], [10.0], [220.0], [5.0])
    t.rename_column("radial_velocity", "radial_velocty")
    with pytest.raises(ColumnError, match="did you mean 'radial_velocty'"):
        orbits(t, n_samples=0)


def test_survey_sentinel_is_a_missing_value():
    # read through cannonade.tables: a -9999 RV (LAMOST/APOGEE "no value") is NaN, not a 9999 km/s
    # star flagged unbound; a -9999 distance error means no distance resampling
    t = observables([8.5] * 3, [0.1] * 3, [0.1] * 3, [10.0] * 3, [220.0] * 3, [5.0] * 3)
    t["radial_velocity"][1] = -9999.0
    t["distance_err"] = [0.1, 0.1, -9999.0]
    o = orbits(t, n_samples=5, seed=0)
    assert not o["unbound"].any()
    assert np.isfinite(o["R"][1]) and np.isnan(o["vT"][1]) and np.isnan(o["Jphi"][1])
    assert np.isfinite(o["vT"][0]) and o["e_R"][0] > 0 and o["e_R"][2] == 0.0
    df = orbits(t.to_pandas(), n_samples=0)
    assert np.isnan(df["vT"][1]) and not df["unbound"].any()


def test_text_column_is_a_column_error():
    from cannonade.exceptions import CannonadeError, ColumnError

    t = observables([8.5], [0.1], [0.1], [10.0], [220.0], [5.0])
    t["distance"] = ["far"]
    with pytest.raises(ColumnError, match="distance") as err:
        orbits(t, n_samples=0)
    assert isinstance(err.value, CannonadeError)


def test_add_dynamics_gaia_match_distances_and_missing_star():
    truth = ([8.5, 7.0, 9.0], [0.1, -0.05, 0.2], [0.3, -0.4, 1.0], [10.0, -20.0, 30.0], [225.0, 200.0, 180.0], [5.0, -10.0, 15.0])
    obs = observables(*truth)
    cat = Table(dict(designation=["a", "b", "c", "d"], ra=np.r_[obs["ra"], 5.0], dec=np.r_[obs["dec"], -5.0]))
    cat["rv"] = np.r_[obs["radial_velocity"][:2], np.nan, 1.0]  # star c has only a Gaia RV
    cat["rv_err"] = [3.0, 3.0, np.nan, 3.0]
    d_pc = np.asarray(obs["distance"]) * 1000.0
    gaia = Table(dict(
        source_id=np.array([1, 2, 3, 4], dtype=np.int64),
        ra=np.r_[obs["ra"], obs["ra"][0] + 0.5 / 3600],  # a faint neighbour of star a
        dec=np.r_[obs["dec"], obs["dec"][0]],
        pmra=np.r_[obs["pmra"], 0.0], pmra_error=[0.02] * 4,
        pmdec=np.r_[obs["pmdec"], 0.0], pmdec_error=[0.02] * 4,
        radial_velocity=[np.nan, np.nan, obs["radial_velocity"][2], 0.0], radial_velocity_error=[np.nan, np.nan, 1.0, 1.0],
        phot_g_mean_mag=[12.0, 13.0, 14.0, 19.0],
        r_est=np.r_[d_pc, 100.0], r_lo=np.r_[0.95 * d_pc, 90.0], r_hi=np.r_[1.1 * d_pc, 110.0],
    ))
    out = add_dynamics(cat, gaia, n_samples=10, seed=0)
    assert len(out) == 4 and list(out["designation"]) == ["a", "b", "c", "d"]
    assert list(out["source_id"].filled(-1)) == [1, 2, 3, -1]
    assert list(out["gaia_n_matches"]) == [2, 1, 1, 0]
    np.testing.assert_allclose(out["distance"][:3], np.asarray(obs["distance"]), rtol=1e-12)
    for name, val in zip(("R", "phi", "z", "vR", "vT", "vz"), truth):
        np.testing.assert_allclose(out[name][:3], val, rtol=0, atol=FRAME_ATOL.get(name, 2e-3), err_msg=name)
    assert np.all(np.isfinite(out["JR"][:3])) and np.all(out["e_JR"][:3] > 0)
    assert out["radial_velocity_used"][2] == gaia["radial_velocity"][2]
    for name in ("R", "JR", "Jz", "e_JR", "vT"):  # no Gaia match: row kept, NaN dynamics
        assert np.isnan(out[name][3]), name
    assert not out["unbound"].any()


# ---- the opt-in interpolated Stäckel grid (action_method = "staeckel_grid") ----
# One grid for the module (built once per process: ~15 s on a free core, the only slow step).


def _disc_phase_space(n, seed):
    """(R, phi, z, vR, vT, vz) of n thin/thick-disc stars near the Sun (kpc, rad, km/s)."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(6, 12, n), rng.uniform(-0.3, 0.3, n), rng.normal(0, 0.5, n),
            rng.normal(0, 40, n), rng.normal(210, 30, n), rng.normal(0, 25, n))


@pytest.fixture(scope="module")
def grid_and_direct():
    """Disc stars with 10% distances and 5 km/s RVs through orbits() with both methods."""
    from cannonade.galaxy.dynamics import prepare_action_method

    prepare_action_method("staeckel_grid")  # the one build
    t = observables(*_disc_phase_space(150, seed=3))
    t["distance_err"] = 0.1 * t["distance"]
    t["radial_velocity_err"] = 5.0
    t["pmra_error"] = t["pmdec_error"] = 0.05
    kw = dict(n_samples=10, seed=1, show_progress=False)
    return orbits(t, **kw), orbits(t, action_method="staeckel_grid", **kw)


def test_grid_actions_agree_with_the_direct_fudge_on_disc_stars(grid_and_direct):
    """Tolerances from measurement (benchmarks/bench_dynamics.py, docs/catalogue.md): on disc stars
    J_R agrees to ~3e-6 (median) and within 0.2 of its Monte-Carlo error for every star; J_z to
    ~0.6% (median), ~2% near the plane, where the grid's mapping of a star onto its z = 0 table is
    least exact: within half its MC error plus 0.1 kpc km/s for every star (the worst ratios are
    stars with J_z ~ 0.03 and an MC error ~ 0.01 kpc km/s). The MC errors agree likewise."""
    direct, grid = grid_and_direct
    np.testing.assert_array_equal(grid["Jphi"], direct["Jphi"])  # Lz = R vT either way
    for name, median_tol, frac_err, floor in (("JR", 1e-4, 0.2, 0.01), ("Jz", 0.02, 0.5, 0.1)):
        a, b, e = np.asarray(direct[name]), np.asarray(grid[name]), np.asarray(direct["e_" + name])
        assert np.all(np.isfinite(b)) and np.all(e > 0), name
        assert np.median(np.abs(b - a) / a) < median_tol, (name, np.median(np.abs(b - a) / a))
        assert np.all(np.abs(b - a) <= frac_err * e + floor), name
        assert np.median(np.abs(b - a) / e) < 0.1, name
        de = np.abs(np.asarray(grid["e_" + name]) - e)
        assert np.median(de / e) < median_tol and np.all(de <= 0.2 * e + floor), name
    for name in ("R", "vT", "e_vT", "unbound", "f_unbound"):  # the action method changes nothing else
        np.testing.assert_array_equal(np.asarray(grid[name]), np.asarray(direct[name]), err_msg=name)


def test_grid_leaves_halo_and_off_domain_points_to_the_direct_fudge(disc_and_halo):
    """Low-Lz, retrograde and high-energy orbits are outside the grid's reliable domain: they get
    exactly the direct fudge's actions; the disc stars of the same call do not."""
    from cannonade.galaxy.dynamics import actions, energy, in_grid_domain

    (R, _, z, vR, vT, vz), _ = disc_and_halo
    on = in_grid_domain(energy(R, z, vR, vT, vz), R * vT)
    assert on[:12].any() and not on[12:].any()  # the disc and halo of the fixture
    a = actions(R, z, vR, vT, vz)
    b = actions(R, z, vR, vT, vz, method="staeckel_grid")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(y[~on], x[~on])
    assert not np.array_equal(a[0][on], b[0][on])  # interpolated, not recomputed
    np.testing.assert_allclose(b[0][on], a[0][on], rtol=0.05)


def test_grid_method_keeps_unbound_and_non_finite_points_nan():
    from cannonade.galaxy.dynamics import actions

    R = np.array([8.5, 8.5, np.nan, 8.5, -1.0])
    vT = np.array([220.0, 700.0, 220.0, np.inf, 220.0])  # bound, unbound, NaN R, inf vT, R < 0
    JR, Jphi, Jz, unbound = actions(R, np.full(5, 0.1), np.full(5, 10.0), vT, np.full(5, 5.0), method="staeckel_grid")
    assert list(unbound) == [False, True, False, False, False]
    assert np.isfinite(JR[0]) and np.isfinite(Jz[0])
    for J in (JR, Jphi, Jz):
        assert np.all(np.isnan(J[1:]))


@pytest.mark.parametrize("bad", ["grid", "Staeckel", "", None, 1])
def test_unknown_action_method_is_refused_by_name(bad):
    from cannonade.exceptions import ParameterError
    from cannonade.galaxy.dynamics import actions

    t = observables([8.5], [0.1], [0.1], [10.0], [220.0], [5.0])
    with pytest.raises(ParameterError, match="action_method must be one of 'staeckel', 'staeckel_grid', got " + re.escape(repr(bad))):
        orbits(t, n_samples=0, action_method=bad)
    with pytest.raises(ParameterError, match="action_method"):
        actions([8.5], [0.1], [10.0], [220.0], [5.0], method=bad)


def test_grid_method_on_worker_processes_gives_the_serial_results(grid_and_direct, disc_and_halo):
    """The grid is built before the pool starts; forked workers inherit it (the same results)."""
    _, t = disc_and_halo
    t = t.copy()
    t["distance_err"] = 0.1 * t["distance"]
    kw = dict(n_samples=3, seed=3, chunk_size=7, show_progress=False, action_method="staeckel_grid")
    a, b = orbits(t, **kw), orbits(t, workers=2, **kw)
    for name in ("JR", "Jz", "e_JR", "e_Jz"):
        np.testing.assert_array_equal(np.asarray(b[name], float), np.asarray(a[name], float), err_msg=name)
