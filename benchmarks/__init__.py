"""Ratio benchmarks against the anchors; ``make bench`` runs ``python -m benchmarks.run``."""
