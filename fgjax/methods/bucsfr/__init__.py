"""BuCSFR (BeCarefulOfYournaoke/BuCSFR): fine-grained features from coarse labels only, by
bottom-up clustering (BuC: k-means, coding-length merges) and soft-target contrastive
feature refinement (SFR) on MoCo v2."""

from fgjax.methods.bucsfr.method import BuCSFR

__all__ = ["BuCSFR"]
