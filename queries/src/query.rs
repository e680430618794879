//! What a continuous query is: a name, the compacted topic its result changes go to, its result
//! key and columns, and the differential-dataflow fragment that computes its answer from the
//! source collections ([`Inputs`]). The queries themselves are declared in [`crate::declared`].

use differential_dataflow::VecCollection;
use topics::spec::TopicSpec;

use crate::model::{Customer, Order, Product, Review};
use crate::row::{Column, Row};

/// Logical time: milliseconds since the Unix epoch. Source changes enter at the wall-clock
/// time they are applied; the clock advances it when no data changes, which releases
/// results that were scheduled for a future time (temporal filters).
pub type Time = u64;

/// The source tables as differential collections, plus the queries' parameters.
pub struct Inputs<'s> {
    pub products: VecCollection<'s, Time, Product>,
    pub customers: VecCollection<'s, Time, Customer>,
    pub orders: VecCollection<'s, Time, Order>,
    pub reviews: VecCollection<'s, Time, Review>,
    pub params: Params,
}

/// Parameters of the declared queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// How long a Gold customer's order may stay Processing before it is delayed.
    pub gold_order_delay_ms: u64,
}

/// A query's answer: (result key, row) pairs, one per key.
pub type Answer<'s> = VecCollection<'s, Time, (String, Row)>;

/// A declared continuous query.
pub struct Query {
    /// The query's name, e.g. `product-catalogue`.
    pub name: &'static str,
    /// Its result-change topic (compacted, keyed by the result key) and Avro contract.
    pub topic: &'static TopicSpec,
    /// A non-compacted topic receiving every change too (same contract and sequence numbers,
    /// same transaction), for consumers that need each change after compaction has kept only
    /// the newest per key (the notifications). `None`: the compacted topic only.
    pub history: Option<&'static TopicSpec>,
    /// The column whose value is the result key.
    pub key: &'static str,
    /// The result row's columns, in the order of the contract's row record.
    pub columns: &'static [Column],
    /// The dataflow computing the answer.
    pub build: for<'s> fn(&Inputs<'s>) -> Answer<'s>,
}

impl Query {
    /// The index of the key column.
    pub fn key_index(&self) -> usize {
        self.columns
            .iter()
            .position(|c| c.name == self.key)
            .expect("a query's key is one of its columns (checked by declared::tests)")
    }
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("name", &self.name)
            .field("topic", &self.topic.name)
            .field("key", &self.key)
            .finish()
    }
}
