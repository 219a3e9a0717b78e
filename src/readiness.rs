//! Readiness as a registry of guards: each start-up task (a cache sync, a
//! listener bind) holds a guard, and the process is ready once every guard
//! has been marked ready. Dropping a guard without marking it keeps the
//! process unready, so a task that dies during start-up is noticed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeSet<String>>>);

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
        self.pending_mut().insert(name.clone());
        ReadyGuard { name, registry: self.clone() }
    }

    /// The tasks not ready yet (empty when ready).
    pub fn pending(&self) -> Vec<String> {
        self.pending_mut().iter().cloned().collect()
    }

    pub fn is_ready(&self) -> bool {
        self.pending_mut().is_empty()
    }

    fn pending_mut(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A set of names cannot be left half-updated; take over a poisoned lock.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ReadyGuard {
    pub fn ready(self) {
        self.registry.pending_mut().remove(&self.name);
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
}
