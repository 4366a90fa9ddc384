//! [`relock`]: the one way the runtime takes its plain mutexes.

use std::sync::{Mutex, MutexGuard};

/// The data behind `m`, even if a holder panicked: a panic while holding
/// one of the runtime's locks cannot leave its map half-changed (every
/// change is one insert or remove), so carry on with the data.
pub(crate) fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
