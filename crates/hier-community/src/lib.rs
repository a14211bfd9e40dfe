//! hier-community
