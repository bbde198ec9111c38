//! herald-telemetry
