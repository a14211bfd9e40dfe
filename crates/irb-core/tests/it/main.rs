//! The integration tests of `irb-core`, in one binary (one link of burn instead of
//! one per file).

mod moat_mbconv;
mod wgpu_smoke;
