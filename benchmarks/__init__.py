"""Benchmarks of flockrt. ``python -m benchmarks.kernel`` runs the actor-kernel suite."""
