"""Kept for `python -m fgjax.text` (now `fgjax text`); the code is in fgjax.methods.leadpp.text."""
