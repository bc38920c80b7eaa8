"""Benchmarks: kernel-level (`python -m bench.kernels`)."""
