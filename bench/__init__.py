"""Benchmarks: ``python -m bench.speed`` (epochs per second against a raw loop and plain
Lightning), ``python -m bench.cost`` (wall time and peak memory of recipe runs)."""
