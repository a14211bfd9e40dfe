//! Heap measurement for benchmarks: the counting allocator lives in `mobiletl::heap` (its
//! measured-memory command needs it too); this adds timing around it.

pub use mobiletl::heap::{CountingAllocator, current, peak, reset_peak};

/// Runs `f`, returning its value, the seconds it took and the peak heap bytes it added on
/// top of what was live when it started.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, f64, usize) {
    let base = reset_peak();
    let start = std::time::Instant::now();
    let value = f();
    let seconds = start.elapsed().as_secs_f64();
    (value, seconds, peak().saturating_sub(base))
}
