//! Sortable unique ids for events (`evt_…`), subscriptions (`sub_…`), agents (`agt_…`),
//! replay orders relayed between control-plane replicas (`rpl_…`), console sign-ins (`ses_…`)
//! and the web forms that create subscriptions (`frm_…`).
//!
//! An id is a type prefix followed by a ULID: 48 bits of milliseconds then 80 random bits, in
//! Crockford base32, so ids sort by creation time as plain strings. All ids of one process come
//! from a single monotonic generator: an id made later in the same process always sorts after
//! one made earlier, even within the same millisecond.

use std::sync::{Mutex, PoisonError};

use ulid::{Generator, Ulid};

/// The process-wide generator; the lock makes "later sorts after" hold across threads.
static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());

/// A new event id, `evt_<ULID>`.
pub fn new_event_id() -> String {
    format!("evt_{}", next_ulid())
}

/// A new subscription id, `sub_<ULID>`.
pub fn new_subscription_id() -> String {
    format!("sub_{}", next_ulid())
}

/// A new agent id, `agt_<ULID>`.
pub fn new_agent_id() -> String {
    format!("agt_{}", next_ulid())
}

/// A new relayed replay order id, `rpl_<ULID>`.
pub fn new_replay_order_id() -> String {
    format!("rpl_{}", next_ulid())
}

/// A new console sign-in id, `ses_<ULID>` (it names a session so that signing out can end it
/// on every replica; it is sealed in the session's cookie, never shown).
pub fn new_session_id() -> String {
    format!("ses_{}", next_ulid())
}

/// A new web form key, `frm_<ULID>`: a create form carries it as its idempotency key, so a
/// form posted twice (a double click, a page reloaded) makes one subscription.
pub fn new_form_key() -> String {
    format!("frm_{}", next_ulid())
}

/// The next ULID from the process-wide generator.
fn next_ulid() -> Ulid {
    // The generator holds only the previous ULID, which is valid even if a holder panicked.
    let mut generator = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    // `generate` fails only when 2^80 ids were made in one millisecond; a fresh random ULID is
    // still unique then, merely not ordered within that millisecond.
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_have_their_prefix_and_a_ulid() {
        for (id, prefix) in [
            (new_event_id(), "evt_"),
            (new_subscription_id(), "sub_"),
            (new_agent_id(), "agt_"),
        ] {
            let ulid = id.strip_prefix(prefix).expect(&id);
            assert!(Ulid::from_string(ulid).is_ok(), "{id}");
            assert_eq!(id.len(), prefix.len() + ulid::ULID_LEN);
        }
    }

    #[test]
    fn consecutive_ids_sort_in_creation_order() {
        let ids: Vec<String> = (0..10_000).map(|_| new_event_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1_000).map(|_| new_agent_id()).collect::<Vec<_>>()))
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(all.insert(id));
            }
        }
        assert_eq!(all.len(), 4_000);
    }
}
