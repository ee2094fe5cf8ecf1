"""Benchmarks: latency, peak memory, FLOPs and scaling of every registered mechanism."""

from visattn.bench.core import BenchResult, bench_mechanism, run_bench, scaling_slopes
from visattn.bench.measure import median_time, peak_memory_bytes

__all__ = ["BenchResult", "bench_mechanism", "run_bench", "scaling_slopes", "median_time", "peak_memory_bytes"]
