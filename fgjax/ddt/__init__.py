"""Kept for `python -m fgjax.ddt` (now `fgjax ddt`); the DDT code is in fgjax.methods.leadpp.ddt."""
