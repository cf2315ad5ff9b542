"""LEAD++ (HuiGuanLab/LEAD-pp): LCR's rationale branch on MoCo v2, distilled from a frozen
CLIP teacher and its text prototypes, trained and probed on DDT crops; the text
prototypes (`text/`) and the DDT crop locator (`ddt/`)."""

from fgjax.methods.leadpp.method import LEADPP

__all__ = ["LEADPP"]
