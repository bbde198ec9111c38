//! Processes a test starts: ended by their pid when the test ends.

use std::process::Child;

/// A process this test started, ended with SIGKILL (by its pid) when the
/// test ends, also when an assertion fails first.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
