//! herald-codec
