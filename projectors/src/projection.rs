//! What a read model makes of an event.

use serde_json::Value;
use topics::events::Event;

/// One change to a read model: documents addressed by key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put { key: String, document: Value },
    Delete { key: String },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// A read model: a pure fold from events to document changes. Purity is what makes a read
/// model disposable: replaying the topic into an empty store rebuilds it exactly.
pub trait Projection: Send + Sync + 'static {
    type Event: Event;

    /// The read model's name; it names the consumer group and the store's namespace.
    fn name(&self) -> &str;

    fn apply(&self, event: &Self::Event) -> Vec<Change>;
}
