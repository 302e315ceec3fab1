"""Pinned public path for Galactic orbits: ``from cannonade.dynamics import orbits``.

The code lives in :mod:`cannonade.galaxy.dynamics`.
"""

from cannonade.galaxy.dynamics import actions, galactocentric, orbits

__all__ = ["orbits", "galactocentric", "actions"]
