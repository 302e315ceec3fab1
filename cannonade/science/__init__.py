"""Science analyses of a finished catalogue (Wheeler et al. 2020 §5.2–5.4; ``docs/science.md``).

- :mod:`~cannonade.science.wide_binaries`: Gaia wide-binary pairs, the Eq. 6 chemical distance
  and the binaries-against-field-pairs test of Fig. 12;
- :mod:`~cannonade.science.chemical_maps`: mean-label maps in (R, z), (X, Y) and (R, v_φ)
  (Figs 13–15) and the radial [Fe/H] gradient;
- :mod:`~cannonade.science.abundance_planes`: [X/Fe] vs [Fe/H] coloured by v_φ in (R, |z|)
  bins (Figs 16–17);
- :mod:`~cannonade.science.selection`: the quality cut, dwarfs, giants and the kinematic thin disc.

Each function takes a catalogue table (astropy Table, pandas DataFrame or dict of arrays) and
returns a frozen dataclass; figures are drawn elsewhere from these results.
"""

from cannonade.science.abundance_planes import (
    AbundancePanel,
    AbundancePlanes,
    abundance_planes,
    binned_median,
)
from cannonade.science.chemical_maps import (
    LabelMap,
    RadialGradient,
    galactic_xy,
    intrinsic_scatter,
    map_rvphi,
    map_rz,
    map_xy,
    mean_label_map,
    radial_gradient,
    weighted_line_fit,
)
from cannonade.science.selection import (
    dwarf_mask,
    giant_mask,
    quality_mask,
    thin_disc_mask,
)
from cannonade.science.wide_binaries import (
    DWARF_ABUNDANCES,
    GIANT_ABUNDANCES,
    WideBinaryPairs,
    WideBinaryTest,
    chemical_distance,
    find_wide_binaries,
    orbital_pm_limit,
    precision_scaled_distance,
    projected_separation_au,
    wide_binary_test,
)

__all__ = [
    "DWARF_ABUNDANCES",
    "GIANT_ABUNDANCES",
    "AbundancePanel",
    "AbundancePlanes",
    "LabelMap",
    "RadialGradient",
    "WideBinaryPairs",
    "WideBinaryTest",
    "abundance_planes",
    "binned_median",
    "chemical_distance",
    "dwarf_mask",
    "find_wide_binaries",
    "galactic_xy",
    "giant_mask",
    "intrinsic_scatter",
    "map_rvphi",
    "map_rz",
    "map_xy",
    "mean_label_map",
    "orbital_pm_limit",
    "precision_scaled_distance",
    "projected_separation_au",
    "quality_mask",
    "radial_gradient",
    "thin_disc_mask",
    "weighted_line_fit",
    "wide_binary_test",
]
