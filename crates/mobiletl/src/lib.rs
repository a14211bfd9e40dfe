//! mobiletl
