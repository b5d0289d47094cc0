//! The one way this project takes a mutex: [`lock`] recovers the data when another thread panicked while
//! holding it, because every critical section in the project is panic-free bookkeeping whose state stays
//! consistent.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering the data if another thread panicked while holding it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
