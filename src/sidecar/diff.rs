//! What a reload changed in one kind of thing (peers, forwards, services).

use serde::Serialize;

/// Names added, removed and changed by a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff<T> {
    pub added: Vec<T>,
    pub removed: Vec<T>,
    pub changed: Vec<T>,
}

impl<T> Default for Diff<T> {
    fn default() -> Self {
        Diff {
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
        }
    }
}
