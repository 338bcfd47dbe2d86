//! The WAMP messages a router worker received and sent, by message type, for the agent's
//! `/metrics` (docs/operations.md, "Metrics"). Counted where every message passes (decoding a
//! received one, queueing one to the socket), with one relaxed atomic addition each; the agent
//! reads them at scrape time with `GetRouterTransport` over the worker's control socket.
//!
//! The counters are per process: a router worker runs exactly one router, and its client
//! sessions and both ends of its router links all count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::message::code;

/// The message types counted by name; any other code counts as `OTHER`.
const TYPES: [(u64, &str); 24] = [
    (code::HELLO, "HELLO"),
    (code::WELCOME, "WELCOME"),
    (code::ABORT, "ABORT"),
    (code::CHALLENGE, "CHALLENGE"),
    (code::AUTHENTICATE, "AUTHENTICATE"),
    (code::GOODBYE, "GOODBYE"),
    (code::ERROR, "ERROR"),
    (code::PUBLISH, "PUBLISH"),
    (code::PUBLISHED, "PUBLISHED"),
    (code::SUBSCRIBE, "SUBSCRIBE"),
    (code::SUBSCRIBED, "SUBSCRIBED"),
    (code::UNSUBSCRIBE, "UNSUBSCRIBE"),
    (code::UNSUBSCRIBED, "UNSUBSCRIBED"),
    (code::EVENT, "EVENT"),
    (code::CALL, "CALL"),
    (code::CANCEL, "CANCEL"),
    (code::RESULT, "RESULT"),
    (code::REGISTER, "REGISTER"),
    (code::REGISTERED, "REGISTERED"),
    (code::UNREGISTER, "UNREGISTER"),
    (code::UNREGISTERED, "UNREGISTERED"),
    (code::INVOCATION, "INVOCATION"),
    (code::INTERRUPT, "INTERRUPT"),
    (code::YIELD, "YIELD"),
];

/// Codes above this count as `OTHER` (index 0 is never a WAMP code and holds them).
const MAX_CODE: usize = 70;

/// Message counts by code.
#[derive(Debug)]
pub struct Messages([AtomicU64; MAX_CODE + 1]);

/// This process's received messages.
pub static RECEIVED: Messages = Messages::new();
/// This process's sent messages.
pub static SENT: Messages = Messages::new();

impl Messages {
    const fn new() -> Self {
        Messages([const { AtomicU64::new(0) }; MAX_CODE + 1])
    }

    /// Counts `message` (a WAMP message array).
    pub fn count(&self, message: &[Value]) {
        let code = message.first().and_then(Value::as_u64).unwrap_or(0);
        let i = usize::try_from(code)
            .ok()
            .filter(|c| *c <= MAX_CODE)
            .unwrap_or(0);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts by type name (types never seen are left out; unknown codes are `OTHER`).
    pub fn by_type(&self) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        let mut other = 0;
        for (i, n) in self.0.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            match TYPES.iter().find(|(c, _)| *c == i as u64) {
                Some((_, name)) => {
                    out.insert((*name).to_owned(), n);
                }
                None => other += n,
            }
        }
        if other > 0 {
            out.insert("OTHER".to_owned(), other);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_count_by_type_name() {
        let m = Messages::new();
        m.count(&[json!(code::PUBLISH), json!(1)]);
        m.count(&[json!(code::PUBLISH)]);
        m.count(&[json!(code::CALL)]);
        m.count(&[json!(9999)]);
        m.count(&[json!(7)]);
        m.count(&[json!("x")]);
        let by = m.by_type();
        assert_eq!(by["PUBLISH"], 2);
        assert_eq!(by["CALL"], 1);
        assert_eq!(by["OTHER"], 3);
        assert_eq!(by.len(), 3);
    }
}
