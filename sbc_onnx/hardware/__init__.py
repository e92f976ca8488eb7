"""Deployment to neuromorphic chips: hardware profiles, compress-for-target with scale folding,
constraint checks, and the SynOps / energy / memory report."""

from .check import Violation, check_graph
from .deploy import (
                     DeployReport,
                     IntegerModel,
                     compress_for_target,
                     fold_scales,
                     integerize,
                     twin_path,
                     write_deployment,
)
from .energy import E_AC_PJ, E_MAC_PJ, EnergyReport, compare_table, energy_report, plot_reports
from .profiles import Profile, load_profile, profile_names

__all__ = [
                     "E_AC_PJ",
                     "E_MAC_PJ",
                     "DeployReport",
                     "EnergyReport",
                     "IntegerModel",
                     "Profile",
                     "Violation",
                     "check_graph",
                     "compare_table",
                     "compress_for_target",
                     "energy_report",
                     "fold_scales",
                     "integerize",
                     "load_profile",
                     "plot_reports",
                     "profile_names",
                     "twin_path",
                     "write_deployment",
]
