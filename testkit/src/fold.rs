//! A fold that depends on every event: per key, the ids of its events in order. A lost,
//! repeated or reordered event changes it, where "the last value per key" hides all three.
//!
//! A read model under test keeps a digest of the same sequence (a count and a hash chain,
//! `projectors::digest`), and a fault test compares it with the fold of what was published.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fold {
    keys: BTreeMap<String, Vec<String>>,
}

impl Fold {
    /// Folds one more event of `key`.
    pub fn push(&mut self, key: &str, event_id: &str) {
        self.keys
            .entry(key.to_owned())
            .or_default()
            .push(event_id.to_owned());
    }

    /// The event ids of `key`, in the order they were folded.
    pub fn events_of(&self, key: &str) -> &[String] {
        self.keys.get(key).map_or(&[], Vec::as_slice)
    }

    pub fn keys(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.keys.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many events were folded, over all keys.
    pub fn events(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fold_sees_loss_repetition_and_reordering() {
        let fold = |ids: &[&str]| {
            let mut f = Fold::default();
            for id in ids {
                f.push("k", id);
            }
            f
        };
        let base = fold(&["a", "b", "c"]);
        assert_eq!(base, fold(&["a", "b", "c"]));
        assert_ne!(base, fold(&["a", "c"]));
        assert_ne!(base, fold(&["a", "b", "b", "c"]));
        assert_ne!(base, fold(&["a", "c", "b"]));
        assert_eq!(base.events(), 3);
        assert_eq!(base.events_of("k"), ["a", "b", "c"]);
    }
}
