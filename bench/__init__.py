"""Benchmarks: ``make bench`` runs them against the real server over loopback."""
