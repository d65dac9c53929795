"""Imported only by units.py: it must travel too (found by parsing units' imports)."""

EPSILON = 0.0
