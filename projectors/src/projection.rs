//! What a read model makes of an event.

use serde_json::Value;
use topics::events::Event;

/// One change to a read model: documents addressed by key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put {
        key: String,
        document: Value,
    },
    /// A put of a document already serialized to JSON text (by [`Projection::fold_json`]).
    PutJson {
        key: String,
        json: String,
    },
    Delete {
        key: String,
    },
}

impl Change {
    pub fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::PutJson { key, .. } | Change::Delete { key } => key,
        }
    }
}

/// A read model: a pure fold of events into documents, one document per key. Purity is what
/// makes a read model disposable: replaying the topic into an empty store rebuilds it exactly.
pub trait Projection: Send + Sync + 'static {
    type Event: Event;

    /// The read model's name, for logs.
    fn name(&self) -> &str;

    /// The key of the document `event` folds into. When it is the record's key, the record's
    /// per-key sequence (`event-seq` header) guards the document against re-sent events.
    fn key(&self, event: &Self::Event) -> String;

    /// Folds `event` into the document's state: `None` in means no document yet, `None` out
    /// deletes it.
    fn fold(&self, state: Option<&Value>, event: &Self::Event) -> Option<Value>;

    /// Whether [`Projection::fold`] looks at the state. A read model whose document is the
    /// last event's alone says `false`, which spares the store a read per batch.
    fn reads_state(&self) -> bool {
        true
    }

    /// Whether the projector folds with [`Projection::fold_json`] instead of
    /// [`Projection::fold`]: documents then go from the store's text to the store's text
    /// without a `serde_json::Value` in between, which is most of a simple fold's cost.
    fn folds_json(&self) -> bool {
        false
    }

    /// [`Projection::fold`] on the documents' JSON text; must make the same document. A
    /// stored text that does not parse is folded as no document, as `fold` does with a
    /// document it cannot read.
    fn fold_json(&self, state: Option<&str>, event: &Self::Event) -> Option<String> {
        let state: Option<Value> = state.and_then(|s| serde_json::from_str(s).ok());
        self.fold(state.as_ref(), event).map(|d| d.to_string())
    }
}
