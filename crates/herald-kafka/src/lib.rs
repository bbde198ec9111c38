//! herald-kafka
