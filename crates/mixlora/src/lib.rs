//! mixlora
