//! Revoked node certificates (docs/security.md, "Revocation").
//!
//! Removing a node revokes every certificate of its authid issued until then: a node
//! certificate of a revoked authid is refused unless it starts (`not_before`) after the
//! revocation. This covers certificates the master never saw (issued by hand with `ca issue`)
//! as well as those it issued, and the master issues a node's later certificates with a
//! `not_before` past the revocation (a new join token), so they are told apart.
//!
//! The master keeps the list in its store and hands it to every agent in heartbeat responses
//! (versioned, so unchanged lists are not resent); both check it in the role layer
//! ([`crate::auth`]) on every call.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::auth::{Principal, Role};

/// The revoked node authids, each with the Unix second up to which its certificates are revoked.
#[derive(Debug, Default)]
pub struct Revocations {
    nodes: RwLock<BTreeMap<String, i64>>,
}

impl Revocations {
    /// An empty list.
    pub fn new() -> Self {
        Revocations::default()
    }

    /// Replaces the whole list.
    pub fn replace(&self, nodes: BTreeMap<String, i64>) {
        *self.nodes.write().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// Revokes the certificates of `authid` that start at or before `until` (Unix seconds).
    pub fn revoke(&self, authid: &str, until: i64) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let entry = nodes.entry(authid.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// When the certificates of `authid` were last revoked (Unix seconds), if ever.
    pub fn revoked_until(&self, authid: &str) -> Option<i64> {
        self.nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(authid)
            .copied()
    }

    /// Whether a certificate of `principal` starting at `not_before` (Unix seconds) is revoked.
    pub fn is_revoked(&self, principal: &Principal, not_before: i64) -> bool {
        principal.role == Role::Node
            && self
                .revoked_until(&principal.name)
                .is_some_and(|until| not_before <= until)
    }

    /// The whole list.
    pub fn snapshot(&self) -> BTreeMap<String, i64> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A digest of the list (0 when empty): agents report the version they hold and get the
    /// list again only when it differs.
    pub fn version(&self) -> u64 {
        version_of(&self.snapshot())
    }
}

/// The version of a list (FNV-1a over its entries; 0 for the empty list).
pub fn version_of(nodes: &BTreeMap<String, i64>) -> u64 {
    if nodes.is_empty() {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (authid, until) in nodes {
        for b in authid.bytes().chain([0]).chain(until.to_be_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_up_to_the_revocation_are_revoked_later_ones_are_not() {
        let r = Revocations::new();
        let n1 = Principal::node("n1");
        assert!(!r.is_revoked(&n1, 100));
        r.revoke("n1", 1000);
        assert!(r.is_revoked(&n1, 100));
        assert!(r.is_revoked(&n1, 1000));
        assert!(!r.is_revoked(&n1, 1001));
        assert!(!r.is_revoked(&Principal::node("n2"), 100));
        assert!(!r.is_revoked(&Principal::admin("n1"), 100));
        // A later revocation moves the cut, an earlier one does not.
        r.revoke("n1", 900);
        assert_eq!(r.revoked_until("n1"), Some(1000));
    }

    #[test]
    fn versions_change_with_the_list() {
        let r = Revocations::new();
        assert_eq!(r.version(), 0);
        r.revoke("n1", 5);
        let v1 = r.version();
        assert_ne!(v1, 0);
        r.revoke("n1", 6);
        assert_ne!(r.version(), v1);
        let copy = Revocations::new();
        copy.replace(r.snapshot());
        assert_eq!(copy.version(), r.version());
    }
}
