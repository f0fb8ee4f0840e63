"""Throughput benchmarks of ibjax against PyTorch baselines.

Run from the repository root::

    python -m benchmarks.train_throughput [--quick] [--no-torch] [--json out.json]
    python -m benchmarks.estimator_throughput [--quick] [--no-torch] [--json out.json]

PyTorch is only needed for the baselines (the ``bench`` extra); ``--no-torch`` skips them.
"""
