//! Readiness as a registry of guards: each start-up task (a cache sync, a
//! listener bind) holds a guard, and the process is ready once every guard
//! has been marked ready. Dropping a guard without marking it keeps the
//! process unready, so a task that dies during start-up is noticed.
//!
//! A failure (a long-running task that ended or panicked, reported by
//! [`crate::supervisor`]) makes the process unready for good: it is about
//! to exit, and /readyz says why.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    pending: BTreeSet<String>,
    failures: Vec<String>,
}

/// Held by a start-up task until it is ready.
pub struct ReadyGuard {
    name: String,
    registry: Readiness,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a task that must finish before the process is ready.
    pub fn register(&self, name: impl Into<String>) -> ReadyGuard {
        let name = name.into();
        self.state().pending.insert(name.clone());
        ReadyGuard { name, registry: self.clone() }
    }

    /// Marks the process unready for good, saying why (which task failed, how).
    pub fn fail(&self, reason: impl Into<String>) {
        self.state().failures.push(reason.into());
    }

    /// The tasks not ready yet (empty when ready).
    pub fn pending(&self) -> Vec<String> {
        self.state().pending.iter().cloned().collect()
    }

    /// Why the process will not become ready again (empty unless a task failed).
    pub fn failures(&self) -> Vec<String> {
        self.state().failures.clone()
    }

    pub fn is_ready(&self) -> bool {
        let state = self.state();
        state.pending.is_empty() && state.failures.is_empty()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A set of names cannot be left half-updated; take over a poisoned lock.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReadyGuard {
    pub fn ready(self) {
        self.registry.state().pending.remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_guard_is_marked() {
        let r = Readiness::new();
        let a = r.register("a");
        let b = r.register("b");
        assert!(!r.is_ready());
        a.ready();
        assert_eq!(r.pending(), vec!["b".to_string()]);
        drop(b);
        assert!(!r.is_ready(), "a dropped guard is not a ready task");
    }

    #[test]
    fn a_failure_makes_a_ready_process_unready() {
        let r = Readiness::new();
        r.register("a").ready();
        assert!(r.is_ready());
        r.fail("task `a` panicked: boom");
        assert!(!r.is_ready());
        assert!(r.pending().is_empty());
        assert_eq!(r.failures(), vec!["task `a` panicked: boom".to_string()]);
    }
}
