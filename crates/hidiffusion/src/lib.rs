//! hidiffusion
