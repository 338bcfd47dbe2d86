//! Join tokens (docs/security.md, "Join tokens"): what a new node proves itself with when it
//! has no certificate yet.
//!
//! A token is `swj1.<id>.<secret>`: the id (8 hex digits) names it in lists and revocations,
//! the secret (128 random bits, 32 hex digits) is stored only as its SHA-256 digest under
//! `jointoken/<id>`. A token expires, may join a limited number of nodes (one by default), may
//! restrict their names to a prefix, and can be revoked. The secret is checked first, in
//! constant time: a caller without it learns nothing about the token's state.

use std::time::{Duration, SystemTime};

use switchyard::error::Reason;
use switchyard::issuer::{hex, sha256};
use switchyard::pb::master::v1::{JoinToken, JoinTokenState};

use crate::error::{Error, Result};
use crate::store::{Store, StoreExt, Txn, codec, keys};

/// The longest lifetime of a token: a week (a token is a standing credential).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);
/// The most nodes one token may join.
pub const MAX_USES: u32 = 10_000;
const PREFIX: &str = "swj1";

/// A token as stored: its public record and the digest of its secret.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenRecord {
    /// The public record.
    #[prost(message, optional, tag = "1")]
    pub info: Option<JoinToken>,
    /// SHA-256 of the secret.
    #[prost(bytes = "vec", tag = "2")]
    pub secret_sha256: Vec<u8>,
}

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// Lifetime.
    pub ttl: Duration,
    /// How many nodes may join with it (0: one).
    pub uses: u32,
    /// Node names must start with this.
    pub name_prefix: String,
    /// A note.
    pub description: String,
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| Error::domain(Reason::Internal, "no system randomness"))?;
    Ok(hex(&buf))
}

/// Splits a token into its id and secret (`None`: not a token's shape).
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let mut parts = token.trim().split('.');
    let (prefix, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (prefix == PREFIX && hex(id, 8) && hex(secret, 32) && parts.next().is_none())
        .then_some((id, secret))
}

/// The state of `token` at `now`.
pub fn state(token: &JoinToken, now: SystemTime) -> JoinTokenState {
    let expires = token
        .expires
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    if token.revoked {
        JoinTokenState::Revoked
    } else if now >= expires {
        JoinTokenState::Expired
    } else if token.uses >= token.max_uses {
        JoinTokenState::Exhausted
    } else {
        JoinTokenState::Valid
    }
}

fn with_state(mut token: JoinToken) -> JoinToken {
    token.state = state(&token, SystemTime::now()) as i32;
    token
}

fn validate(spec: &TokenSpec) -> Result<()> {
    if spec.ttl.is_zero() || spec.ttl > MAX_TTL {
        return Err(Error::invalid(
            "ttl_seconds",
            format!("must be 1..={} seconds", MAX_TTL.as_secs()),
        ));
    }
    if spec.uses > MAX_USES {
        return Err(Error::invalid("uses", format!("at most {MAX_USES}")));
    }
    let prefix_ok = spec.name_prefix.is_empty()
        || (spec.name_prefix.len() < 63
            && switchyard::auth::valid_name(&format!("{}x", spec.name_prefix)));
    if !prefix_ok {
        return Err(Error::invalid(
            "name_prefix",
            "must begin a valid node name ([a-z0-9_.-], starting with a letter or digit)",
        ));
    }
    if spec.description.chars().count() > 200 {
        return Err(Error::invalid("description", "at most 200 characters"));
    }
    Ok(())
}

/// Creates a token; returns the token (shown once) and its record.
pub async fn create(store: &dyn Store, spec: &TokenSpec) -> Result<(String, JoinToken)> {
    validate(spec)?;
    let now = SystemTime::now();
    loop {
        let (id, secret) = (random_hex(4)?, random_hex(16)?);
        let info = JoinToken {
            id: id.clone(),
            created: Some(now.into()),
            expires: Some((now + spec.ttl).into()),
            uses: 0,
            max_uses: spec.uses.max(1),
            name_prefix: spec.name_prefix.clone(),
            revoked: false,
            description: spec.description.clone(),
            state: 0,
            joined: Vec::new(),
        };
        let record = TokenRecord {
            info: Some(info.clone()),
            secret_sha256: sha256(secret.as_bytes()).to_vec(),
        };
        let key = keys::join_token(&id);
        let txn = Txn::new()
            .absent(key.clone())
            .put(key, codec::encode(&record));
        match store.commit(txn).await {
            Ok(_) => return Ok((format!("{PREFIX}.{id}.{secret}"), with_state(info))),
            Err(crate::store::StoreError::Conflict(_)) => continue, // an id taken: draw again
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every token, oldest first.
pub async fn list(store: &dyn Store) -> Result<Vec<JoinToken>> {
    let mut tokens: Vec<JoinToken> = store
        .list::<TokenRecord>(keys::JOIN_TOKENS)
        .await?
        .into_iter()
        .filter_map(|r| r.info)
        .map(with_state)
        .collect();
    tokens.sort_by_key(|t| t.created.map(|c| (c.seconds, c.nanos)));
    Ok(tokens)
}

/// Revokes the token `id` (or the token whose whole text is given).
pub async fn revoke(store: &dyn Store, id: &str) -> Result<JoinToken> {
    let id = parse(id).map_or(id.trim(), |(id, _)| id);
    if id.is_empty() {
        return Err(Error::invalid("id", "required"));
    }
    let key = keys::join_token(id);
    loop {
        let (mut record, bytes) = store
            .load::<TokenRecord>(&key)
            .await?
            .ok_or_else(|| Error::not_found(format_args!("join token '{id}'")))?;
        let info = record.info.get_or_insert_with(Default::default);
        info.revoked = true;
        let info = info.clone();
        let txn = Txn::new()
            .equals(key.clone(), bytes)
            .put(key.clone(), codec::encode(&record));
        match store.commit(txn).await {
            Ok(_) => return Ok(with_state(info)),
            Err(crate::store::StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Checks `secret` and the token's state for a join of `authid`; the refusal's reason otherwise.
pub fn admit(record: &TokenRecord, secret: &str, authid: &str) -> Result<()> {
    let digest = sha256(secret.as_bytes());
    // Digests compared in constant time (a timing difference would say nothing about the
    // secret anyway: it is compared only hashed).
    let secret_ok = digest.len() == record.secret_sha256.len()
        && digest
            .iter()
            .zip(&record.secret_sha256)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    let info =
        record.info.as_ref().filter(|_| secret_ok).ok_or_else(|| {
            Error::domain(Reason::TokenInvalid, "the join token is unknown or wrong")
        })?;
    let refused = |reason, what: &str| {
        Err(Error::domain(
            reason,
            format!("the join token {} {what}", info.id),
        ))
    };
    match state(info, SystemTime::now()) {
        JoinTokenState::Revoked => return refused(Reason::TokenRevoked, "was revoked"),
        JoinTokenState::Expired => return refused(Reason::TokenExpired, "has expired"),
        JoinTokenState::Exhausted => {
            return refused(
                Reason::TokenExhausted,
                &format!("has been used {} of {} times", info.uses, info.max_uses),
            );
        }
        JoinTokenState::Valid | JoinTokenState::Unspecified => {}
    }
    if !authid.starts_with(&info.name_prefix) {
        return Err(Error::domain(
            Reason::NameNotAllowed,
            format!(
                "the join token {} only joins nodes named '{}*', not '{authid}'",
                info.id, info.name_prefix
            ),
        ));
    }
    Ok(())
}

/// The record after one more join, by `authid`.
pub fn used(mut record: TokenRecord, authid: &str) -> TokenRecord {
    if let Some(info) = record.info.as_mut() {
        info.uses += 1;
        info.joined.push(authid.to_owned());
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn spec(uses: u32) -> TokenSpec {
        TokenSpec {
            ttl: Duration::from_secs(60),
            uses,
            name_prefix: "web-".into(),
            description: String::new(),
        }
    }

    async fn record(store: &MemoryStore, id: &str) -> TokenRecord {
        store
            .load::<TokenRecord>(&keys::join_token(id))
            .await
            .unwrap()
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_admit_until_used_up() {
        let store = MemoryStore::default();
        let (token, info) = create(&store, &spec(2)).await.unwrap();
        let (id, secret) = parse(&token).unwrap();
        assert_eq!(id, info.id);
        assert_eq!(info.state, JoinTokenState::Valid as i32);
        // The secret is nowhere in the store.
        for (_, v) in store.scan(b"").await.unwrap() {
            assert!(!String::from_utf8_lossy(&v).contains(secret));
        }
        let mut r = record(&store, id).await;
        admit(&r, secret, "web-1").unwrap();
        r = used(r, "web-1");
        admit(&r, secret, "web-2").unwrap();
        r = used(r, "web-2");
        let reason = |e: Error| match e {
            Error::Domain { reason, .. } => reason,
            other => panic!("{other}"),
        };
        assert_eq!(
            reason(admit(&r, secret, "web-3").unwrap_err()),
            Reason::TokenExhausted
        );
        assert_eq!(r.info.unwrap().joined, ["web-1", "web-2"]);
    }

    #[tokio::test]
    async fn wrong_secret_prefix_revoked_and_expired_have_their_reasons() {
        let store = MemoryStore::default();
        let (token, _) = create(&store, &spec(1)).await.unwrap();
        let (id, secret) = parse(&token).unwrap();
        let r = record(&store, id).await;
        let reason = |res: Result<()>| match res.unwrap_err() {
            Error::Domain { reason, .. } => reason,
            other => panic!("{other}"),
        };
        let wrong = "0".repeat(32);
        assert_eq!(reason(admit(&r, &wrong, "web-1")), Reason::TokenInvalid);
        assert_eq!(reason(admit(&r, secret, "db-1")), Reason::NameNotAllowed);
        let mut expired = r.clone();
        expired.info.as_mut().unwrap().expires = Some(SystemTime::now().into());
        assert_eq!(
            reason(admit(&expired, secret, "web-1")),
            Reason::TokenExpired
        );
        let revoked = revoke(&store, &token).await.unwrap();
        assert_eq!(revoked.state, JoinTokenState::Revoked as i32);
        let r = record(&store, id).await;
        assert_eq!(reason(admit(&r, secret, "web-1")), Reason::TokenRevoked);
        // A wrong secret says nothing about the state.
        assert_eq!(reason(admit(&r, &wrong, "web-1")), Reason::TokenInvalid);
        assert_eq!(list(&store).await.unwrap().len(), 1);
    }

    #[test]
    fn only_well_formed_tokens_parse() {
        let ok = format!("swj1.{}.{}", "a1".repeat(4), "0f".repeat(16));
        assert!(parse(&ok).is_some());
        for bad in [
            "",
            "swj1",
            "swj1.x.y",
            &format!("{ok}.x"),
            &ok.replace("swj1", "swj2"),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn bad_specs_name_their_field() {
        let store = MemoryStore::default();
        let mut bad = [spec(1), spec(1), spec(1)];
        bad[0].ttl = Duration::ZERO;
        bad[1].ttl = MAX_TTL + Duration::from_secs(1);
        bad[2].name_prefix = "Web".into();
        for (s, want) in bad
            .iter()
            .zip(["ttl_seconds", "ttl_seconds", "name_prefix"])
        {
            match create(&store, s).await.unwrap_err() {
                Error::InvalidArgument { field, .. } => assert_eq!(field, want),
                other => panic!("{other}"),
            }
        }
        assert!(list(&store).await.unwrap().is_empty());
    }
}
