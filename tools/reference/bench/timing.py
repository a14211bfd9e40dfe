"""The timing rule shared by the reference benchmarks (the same as xtask's
`time_interleaved`: warm-up runs, then at least `min_runs` and at most `max_runs` runs
within `budget_s`, median reported)."""

import statistics
import time


def median_ms(step, warmup=2, min_runs=5, max_runs=30, budget_s=8.0):
    for _ in range(warmup):
        step()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_runs or (
        len(samples) < max_runs and time.perf_counter() - start < budget_s
    ):
        t = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)
