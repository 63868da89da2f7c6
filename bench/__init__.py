"""Benchmarks, each run as ``python -m bench.NAME`` (``--help`` for its options), each writing
its figures into its section of ``docs/RESULTS.md`` (``--results PATH``, ``--no-write``):

* ``speed``: epochs per second of dnnkit against a raw PyTorch loop and plain Lightning;
* ``baselines``: the contenders of ``speed`` reach the same accuracy (they do the same work);
* ``cost``: wall time, CPU time and peak memory of whole recipe runs;
* ``caching``: the ``reuse`` recipe's frozen stage, cached vs uncached;
* ``fold_bn``: prediction latency with batch norm, folded and not, and without it;
* ``gradient_health_overhead``: training-loop time with and without GradientHealth;
* ``seed_curves``: validation curves of the seed's recipes beside its published points.

What they share (the epoch timer, the raw loop, the config helper, the results writer) is
:mod:`bench.common`.
"""
