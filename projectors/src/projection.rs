//! What a read model makes of an event.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use topics::events::Event;

/// One change to a read model: documents addressed by key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Put {
        key: String,
        document: Value,
    },
    /// A put of a document already serialized to JSON text (the projector's writes).
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

    /// A document as the fold works on it: the read model's own type, or
    /// `serde_json::Value` for a fold on untyped JSON. The projector keeps documents in this
    /// form between events and batches: it parses a stored document's JSON text once, when
    /// it first loads it, and writes a document as text once per batch, however many of the
    /// batch's events folded into it (a store with limits judges each folded document's
    /// text). A stored text that does not parse as a `Document` is
    /// folded as no document.
    type Document: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The read model's name, for logs.
    fn name(&self) -> &str;

    /// The key of the document `event` folds into. When it is the record's key, the record's
    /// per-key sequence (`event-seq` header) guards the document against re-sent events.
    fn key(&self, event: &Self::Event) -> String;

    /// Folds `event` into the document's state: `None` in means no document yet, `None` out
    /// deletes it.
    fn fold(&self, state: Option<&Self::Document>, event: &Self::Event) -> Option<Self::Document>;

    /// Whether [`Projection::fold`] looks at the state. A read model whose document is the
    /// last event's alone says `false`, which spares the store a read per batch.
    fn reads_state(&self) -> bool {
        true
    }
}

/// The JSON text of a document, as stores hold it.
pub(crate) fn to_json<D: Serialize>(document: &D) -> std::result::Result<String, String> {
    serde_json::to_string(document)
        .map_err(|e| format!("the document does not serialize to JSON: {e}"))
}
