//! A digest of a key's event history: how many events it has seen and a hash chain over their
//! ids, so two read models (generations, stores, a test's own fold of the log) can be compared
//! on every event rather than on the last one only.

use serde::{Deserialize, Serialize};

/// `events` events folded so far; `chain` = h(…h(h(0, id₁), id₂)…, idₙ) as 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Digest {
    pub events: u64,
    pub chain: String,
}

impl Digest {
    /// The digest of a whole history, in order.
    pub fn of<'a>(event_ids: impl IntoIterator<Item = &'a str>) -> Self {
        event_ids
            .into_iter()
            .fold(Self::default(), |digest, id| digest.push(id))
    }

    /// The digest after one more event.
    pub fn push(&self, event_id: &str) -> Self {
        let previous = u64::from_str_radix(&self.chain, 16).unwrap_or(0);
        Self {
            events: self.events + 1,
            chain: format!("{:016x}", link(previous, event_id.as_bytes())),
        }
    }
}

/// One link of the chain: FNV-1a over the previous link and the event id. Stable across
/// processes and Rust releases, unlike `DefaultHasher`, because stored digests must compare.
pub fn link(previous: u64, event_id: &[u8]) -> u64 {
    previous
        .to_be_bytes()
        .iter()
        .chain(event_id)
        .fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_sees_loss_repetition_and_reordering() {
        let base = Digest::of(["a", "b", "c"]);
        assert_eq!(base, Digest::of(["a", "b", "c"]));
        assert_eq!(base.events, 3);
        assert_ne!(base.chain, Digest::of(["a", "c"]).chain);
        assert_ne!(base.chain, Digest::of(["a", "b", "b", "c"]).chain);
        assert_ne!(base.chain, Digest::of(["a", "c", "b"]).chain);
        assert_eq!(base.chain.len(), 16);
    }
}
