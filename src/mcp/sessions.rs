//! MCP sessions bound to the caller that created them.
//!
//! rmcp's session IDs are unguessable, but an ID can still leak (logs, a
//! shared agent host). A session therefore belongs to the stable node ID of
//! the caller whose `initialize` created it, and a request presenting it
//! from any other node is refused as if the session did not exist. Tool
//! handlers never take identity from a session anyway; this binding keeps
//! another caller from reading the session's server-sent events or closing
//! it.

use std::collections::HashMap;
use std::sync::Mutex;

/// Bindings kept before the ones rmcp has already closed are swept.
const SWEEP_AT: usize = 1024;

/// What a session ID means for a given caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Created by this caller.
    Own,
    /// Created by another caller.
    Other,
    /// Not known.
    Unknown,
}

/// Session ID -> stable node ID of its creator.
#[derive(Debug, Default)]
pub struct Bindings {
    map: Mutex<HashMap<String, String>>,
}

impl Bindings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // The map holds plain strings; a panic elsewhere cannot leave it
        // half-updated.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Binds `session` to `node_id`. Returns the number of bindings, so the
    /// caller can decide to [`Bindings::retain`].
    pub fn bind(&self, session: &str, node_id: &str) -> usize {
        let mut map = self.lock();
        map.insert(session.to_owned(), node_id.to_owned());
        map.len()
    }

    /// What `session` means for `node_id`.
    pub fn check(&self, session: &str, node_id: &str) -> Binding {
        match self.lock().get(session) {
            Some(owner) if owner == node_id => Binding::Own,
            Some(_) => Binding::Other,
            None => Binding::Unknown,
        }
    }

    /// Forgets `session`.
    pub fn unbind(&self, session: &str) {
        self.lock().remove(session);
    }

    /// The bound session IDs.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Keeps only the bindings whose ID is in `live`.
    pub fn retain(&self, live: &[String]) {
        self.lock().retain(|id, _| live.contains(id));
    }

    /// Whether a sweep is due at this many bindings.
    pub fn sweep_due(len: usize) -> bool {
        len >= SWEEP_AT && len.is_power_of_two()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_belongs_to_its_creator() {
        let b = Bindings::default();
        b.bind("s1", "node-a");
        assert_eq!(b.check("s1", "node-a"), Binding::Own);
        assert_eq!(b.check("s1", "node-b"), Binding::Other);
        assert_eq!(b.check("s2", "node-a"), Binding::Unknown);
        b.unbind("s1");
        assert_eq!(b.check("s1", "node-a"), Binding::Unknown);
    }
}
