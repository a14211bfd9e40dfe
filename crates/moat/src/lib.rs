//! moat
