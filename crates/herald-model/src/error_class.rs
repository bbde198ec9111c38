//! How a failure is handled: retry it, record it, or dead-letter it.

/// The classification every Herald error type maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient: the same work may succeed later (network, broker, registry down).
    Retryable,
    /// Will never succeed for this input, but the input is well-formed (bad address,
    /// opted-out user): record a status, do not retry.
    Permanent,
    /// The input itself is broken (undecodable, invalid): dead-letter it with its
    /// original bytes and move on; never retry, never crash.
    Poison,
}

impl ErrorClass {
    /// Lowercase label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Permanent => "permanent",
            Self::Poison => "poison",
        }
    }
}
