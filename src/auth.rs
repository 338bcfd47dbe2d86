//! Who is calling, and may they (docs/security.md, "Principals and roles").
//!
//! Every certificate of the cluster CA carries one URI SAN naming its principal:
//! `spiffe://switchyard/master`, `spiffe://switchyard/node/<authid>` or
//! `spiffe://switchyard/admin/<name>`. The TLS handshake has already proven the certificate
//! (no certificate or a foreign CA never gets here); [`AuthLayer`] then reads the principal from
//! the peer certificate, checks the [`Policy`] of the server against the gRPC method path, and
//! either rejects with PERMISSION_DENIED (reason `NOT_AUTHORIZED`) or passes the request on with
//! the [`Principal`] in its extensions for handlers that need it (`who`, heartbeat authid).
//!
//! The layer also refuses, on every call (so on connections opened earlier too), a certificate
//! that has expired (UNAUTHENTICATED, `CERTIFICATE_EXPIRED`) or was revoked (PERMISSION_DENIED,
//! `CERTIFICATE_REVOKED`; [`crate::revocation`]). The master accepts connections without a
//! client certificate, for `NodeService/JoinNode` alone ([`OPEN_WITHOUT_CERTIFICATE`]).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::error::{Reason, status};
use crate::revocation::Revocations;

/// The URI prefix of every Switchyard principal.
pub const SPIFFE_PREFIX: &str = "spiffe://switchyard/";

/// The role a principal plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Operators and their tools: the admin API of the master and every agent service.
    Admin,
    /// The master: calls agents.
    Master,
    /// An agent: calls the master's node-facing service for its own authid.
    Node,
}

impl Role {
    /// The role's name as it appears in principals and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Master => "master",
            Role::Node => "node",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "master" => Ok(Role::Master),
            "node" => Ok(Role::Node),
            other => Err(format!(
                "unknown role '{other}' (expected admin, master or node)"
            )),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// Its role.
    pub role: Role,
    /// Its name within the role: the admin's name, the node's authid; empty for the master.
    pub name: String,
}

impl Principal {
    /// The master's principal.
    pub fn master() -> Self {
        Principal {
            role: Role::Master,
            name: String::new(),
        }
    }

    /// A node's principal.
    pub fn node(authid: impl Into<String>) -> Self {
        Principal {
            role: Role::Node,
            name: authid.into(),
        }
    }

    /// An admin's principal.
    pub fn admin(name: impl Into<String>) -> Self {
        Principal {
            role: Role::Admin,
            name: name.into(),
        }
    }

    /// The principal that stands for every caller of a server started with `--insecure`.
    pub fn insecure() -> Self {
        Principal::admin("insecure")
    }

    /// The principal's URI (`spiffe://switchyard/<role>[/<name>]`).
    pub fn uri(&self) -> String {
        if self.name.is_empty() {
            format!("{SPIFFE_PREFIX}{}", self.role.as_str())
        } else {
            format!("{SPIFFE_PREFIX}{}/{}", self.role.as_str(), self.name)
        }
    }

    /// Parses a principal URI; `None` for anything that is not a well-formed Switchyard principal.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
        let (role, name) = match rest.split_once('/') {
            Some((role, name)) => (role, name),
            None => (rest, ""),
        };
        let role: Role = role.parse().ok()?;
        match role {
            Role::Master if name.is_empty() => Some(Principal::master()),
            Role::Admin | Role::Node if valid_name(name) => Some(Principal {
                role,
                name: name.to_owned(),
            }),
            _ => None,
        }
    }

    /// The principal named by the URI SAN of a DER certificate.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Principal::from_uri(uri),
            _ => None,
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Whether `name` is a valid admin name or node authid: 1..63 characters of `[a-z0-9_.-]`,
/// starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// Which callers a server admits to which methods (the table of docs/security.md, in one place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The master's server: admin for everything but the node-facing heartbeat, which only
    /// nodes call.
    Master,
    /// An agent's server: admin and master for everything.
    Agent,
}

/// gRPC method paths of the node-facing part of the master.
const NODE_FACING: &[&str] = &[
    "/switchyard.master.v1.NodeService/Heartbeat",
    "/switchyard.master.v1.NodeService/RenewNodeCertificate",
];

/// Methods of the master a client may call without a certificate: a joining node has none yet
/// (it proves itself with a join token instead).
pub const OPEN_WITHOUT_CERTIFICATE: &[&str] = &["/switchyard.master.v1.NodeService/JoinNode"];

/// Services any authenticated caller may use: they reveal nothing and change nothing.
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

impl Policy {
    /// Whether `principal` may call the gRPC method at `path` (`/package.Service/Method`).
    pub fn allows(self, principal: &Principal, path: &str) -> bool {
        if OPEN_SERVICES.iter().any(|p| path.starts_with(p)) || self.open_without_certificate(path)
        {
            return true;
        }
        let node_facing = NODE_FACING.contains(&path);
        match (self, principal.role) {
            (Policy::Master, Role::Admin) => !node_facing,
            (Policy::Master, Role::Node) => node_facing,
            (Policy::Master, Role::Master) => false,
            (Policy::Agent, Role::Admin | Role::Master) => true,
            (Policy::Agent, Role::Node) => false,
        }
    }
}

impl Policy {
    /// Whether a caller without a certificate may call `path`.
    pub fn open_without_certificate(self, path: &str) -> bool {
        self == Policy::Master && OPEN_WITHOUT_CERTIFICATE.contains(&path)
    }
}

/// Request extension marking a call on a plaintext (`--insecure`) server: there is no verified
/// identity, the policy is not enforced, and handlers that check identities (heartbeat authid)
/// trust the request.
#[derive(Debug, Clone, Copy)]
pub struct Insecure;

/// The principal of a request that passed [`AuthLayer`] (handlers call this for `who`).
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

/// A tower layer enforcing a [`Policy`] on every request of a server.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    inner: Arc<AuthConfig>,
}

#[derive(Debug)]
struct AuthConfig {
    policy: Policy,
    /// Revoked node certificates.
    revocations: Arc<Revocations>,
    /// Plaintext server (`--insecure`): there is no certificate, every caller is
    /// [`Principal::insecure`], an admin.
    insecure: bool,
}

impl AuthLayer {
    /// Enforce `policy` on requests over mTLS, refusing certificates in `revocations`.
    pub fn new(policy: Policy, revocations: Arc<Revocations>) -> Self {
        AuthLayer {
            inner: Arc::new(AuthConfig {
                policy,
                revocations,
                insecure: false,
            }),
        }
    }

    /// A plaintext server (the explicit `--insecure` mode): no identities, no policy; every
    /// caller is [`Principal::insecure`] and requests carry [`Insecure`].
    pub fn insecure(policy: Policy) -> Self {
        AuthLayer {
            inner: Arc::new(AuthConfig {
                policy,
                revocations: Arc::default(),
                insecure: true,
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            config: self.inner.clone(),
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    config: Arc<AuthConfig>,
}

/// What the role layer knows of a caller's certificate (also in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The principal its URI SAN names, if any.
    pub principal: Option<Principal>,
    /// Its `not_before`, Unix seconds.
    pub not_before: i64,
    /// Its `not_after`, Unix seconds.
    pub not_after: i64,
}

impl PeerCert {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Self {
        let (not_before, not_after) = crate::issuer::validity(der).unwrap_or((i64::MAX, 0));
        PeerCert {
            principal: Principal::from_certificate(der),
            not_before,
            not_after,
        }
    }
}

/// The caller's certificate (`None`: none was presented).
fn peer_cert<B>(request: &http::Request<B>) -> Option<Arc<PeerCert>> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    Some(cached_cert(certs.first()?.as_ref()))
}

/// Recently seen certificates: parsing X.509 on every call would cost more than the call
/// itself. Bounded; cleared when full (a cluster has few distinct certificates).
fn cached_cert(der: &[u8]) -> Arc<PeerCert> {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    const MAX: usize = 4096;
    type Cache = HashMap<Vec<u8>, Arc<PeerCert>, std::hash::BuildHasherDefault<TailHasher>>;
    static CACHE: OnceLock<RwLock<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(RwLock::default);
    if let Some(hit) = cache.read().unwrap_or_else(|p| p.into_inner()).get(der) {
        return hit.clone();
    }
    let cert = Arc::new(PeerCert::from_der(der));
    let mut map = cache.write().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX {
        map.clear();
    }
    map.insert(der.to_vec(), cert.clone());
    cert
}

/// The current time, Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl AuthConfig {
    /// The verdict on a call to `path` by the holder of `cert`: its principal, or the refusal.
    fn verdict(
        &self,
        cert: Option<&PeerCert>,
        path: &str,
    ) -> Result<Option<Principal>, tonic::Status> {
        let Some(cert) = cert else {
            if self.policy.open_without_certificate(path) {
                return Ok(None);
            }
            return Err(status(
                Reason::Unauthenticated,
                format!(
                    "{path} requires a client certificate of the cluster CA (only {} is open without one)",
                    OPEN_WITHOUT_CERTIFICATE.join(", ")
                ),
            ));
        };
        let Some(principal) = cert.principal.clone() else {
            return Err(status(
                Reason::NotAuthorized,
                "the client certificate names no Switchyard principal (URI SAN spiffe://switchyard/...)",
            ));
        };
        if unix_now() > cert.not_after {
            tracing::warn!(%principal, path, "expired certificate refused");
            return Err(status(
                Reason::CertificateExpired,
                format!("the certificate of {principal} has expired"),
            ));
        }
        if self.revocations.is_revoked(&principal, cert.not_before) {
            tracing::warn!(%principal, path, "revoked certificate refused");
            return Err(status(
                Reason::CertificateRevoked,
                format!(
                    "the certificate of {principal} was revoked (its node was removed); join again with a new token"
                ),
            ));
        }
        if !self.policy.allows(&principal, path) {
            tracing::warn!(%principal, path, "permission denied");
            return Err(status(
                Reason::NotAuthorized,
                format!(
                    "{principal} (role {}) may not call {path}",
                    principal.role.as_str()
                ),
            ));
        }
        Ok(Some(principal))
    }
}

/// Hashes only the last 32 bytes of what it is given: for certificates, part of the CA's
/// signature, which differs between any two certificates. Only certificates that passed the TLS
/// handshake (signed by our CA) are looked up, and keys are still compared whole, so this saves
/// hashing ~600 bytes per call without trusting the hash for identity.
#[derive(Default)]
struct TailHasher(u64);

impl std::hash::Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        // FNV-1a over the tail.
        for &b in &bytes[bytes.len().saturating_sub(32)..] {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if self.config.insecure {
            request.extensions_mut().insert(Principal::insecure());
            request.extensions_mut().insert(Insecure);
            return futures::future::Either::Left(self.inner.call(request));
        }
        let cert = peer_cert(&request);
        match self.config.verdict(cert.as_deref(), request.uri().path()) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                if let Some(cert) = cert {
                    request.extensions_mut().insert(cert);
                }
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_the_same_tail_stay_apart() {
        use std::collections::HashMap;
        let tail = [7u8; 32];
        let a = [&[1u8; 600][..], &tail].concat();
        let b = [&[2u8; 600][..], &tail].concat();
        let mut map: HashMap<Vec<u8>, u8, std::hash::BuildHasherDefault<TailHasher>> =
            HashMap::default();
        map.insert(a.clone(), 1);
        map.insert(b.clone(), 2);
        assert_eq!(map.get(&a[..]), Some(&1));
        assert_eq!(map.get(&b[..]), Some(&2));
        assert_eq!(map.get(&tail[..]), None);
    }

    #[test]
    fn principal_uris_round_trip() {
        for p in [
            Principal::master(),
            Principal::node("node1"),
            Principal::admin("alice"),
        ] {
            assert_eq!(Principal::from_uri(&p.uri()), Some(p));
        }
        assert_eq!(Principal::node("n1").uri(), "spiffe://switchyard/node/n1");
    }

    #[test]
    fn malformed_principals_are_rejected() {
        for uri in [
            "spiffe://switchyard/node",
            "spiffe://switchyard/node/",
            "spiffe://switchyard/admin/Alice",
            "spiffe://switchyard/master/x",
            "spiffe://switchyard/root/x",
            "spiffe://other/node/n1",
            "https://switchyard/node/n1",
            "spiffe://switchyard/node/a/b",
        ] {
            assert_eq!(Principal::from_uri(uri), None, "{uri}");
        }
    }

    #[test]
    fn master_policy_follows_the_spec_table() {
        let web = "/switchyard.master.v1.WebClusterService/ListWebClusters";
        let hb = "/switchyard.master.v1.NodeService/Heartbeat";
        let gw = "/switchyard.agent.v1.NativeProcessService/GetProcessStats";
        let admin = Principal::admin("a");
        let node = Principal::node("n1");
        let master = Principal::master();
        assert!(Policy::Master.allows(&admin, web));
        assert!(Policy::Master.allows(&admin, gw));
        assert!(!Policy::Master.allows(&admin, hb));
        assert!(Policy::Master.allows(&node, hb));
        assert!(!Policy::Master.allows(&node, web));
        assert!(!Policy::Master.allows(&node, gw));
        assert!(!Policy::Master.allows(&master, web));
        assert!(Policy::Master.allows(&node, "/grpc.health.v1.Health/Check"));
        let renew = "/switchyard.master.v1.NodeService/RenewNodeCertificate";
        assert!(Policy::Master.allows(&node, renew));
        assert!(!Policy::Master.allows(&admin, renew));
        let token = "/switchyard.master.v1.NodeService/CreateJoinToken";
        assert!(Policy::Master.allows(&admin, token));
        assert!(!Policy::Master.allows(&node, token));
    }

    #[test]
    fn agent_policy_follows_the_spec_table() {
        let np = "/switchyard.agent.v1.NativeProcessService/Uptime";
        assert!(Policy::Agent.allows(&Principal::admin("a"), np));
        assert!(Policy::Agent.allows(&Principal::master(), np));
        assert!(!Policy::Agent.allows(&Principal::node("n1"), np));
    }

    fn config(policy: Policy) -> AuthConfig {
        AuthConfig {
            policy,
            revocations: Arc::default(),
            insecure: false,
        }
    }

    fn cert(principal: Principal, not_before: i64, not_after: i64) -> PeerCert {
        PeerCert {
            principal: Some(principal),
            not_before,
            not_after,
        }
    }

    fn reason(r: Result<Option<Principal>, tonic::Status>) -> String {
        crate::error::reason_of(&r.unwrap_err()).unwrap()
    }

    #[test]
    fn only_join_node_is_open_without_a_certificate_and_only_on_the_master() {
        let join = "/switchyard.master.v1.NodeService/JoinNode";
        let list = "/switchyard.master.v1.NodeService/ListNodes";
        assert_eq!(config(Policy::Master).verdict(None, join).unwrap(), None);
        assert_eq!(
            reason(config(Policy::Master).verdict(None, list)),
            "UNAUTHENTICATED"
        );
        assert_eq!(
            reason(config(Policy::Agent).verdict(None, join)),
            "UNAUTHENTICATED"
        );
    }

    #[test]
    fn expired_and_revoked_certificates_are_refused_on_every_call() {
        let hb = "/switchyard.master.v1.NodeService/Heartbeat";
        let now = unix_now();
        let c = config(Policy::Master);
        let fresh = cert(Principal::node("n1"), now - 10, now + 100);
        assert_eq!(
            c.verdict(Some(&fresh), hb).unwrap(),
            Some(Principal::node("n1"))
        );
        let expired = cert(Principal::node("n1"), now - 100, now - 1);
        assert_eq!(reason(c.verdict(Some(&expired), hb)), "CERTIFICATE_EXPIRED");
        c.revocations.revoke("n1", now);
        assert_eq!(reason(c.verdict(Some(&fresh), hb)), "CERTIFICATE_REVOKED");
        // One issued after the revocation passes; other nodes are untouched.
        let reissued = cert(Principal::node("n1"), now + 1, now + 100);
        assert!(c.verdict(Some(&reissued), hb).is_ok());
        let other = cert(Principal::node("n2"), now - 10, now + 100);
        assert!(c.verdict(Some(&other), hb).is_ok());
        // A revoked node's certificate is refused for its revocation before the role check.
        let a = config(Policy::Agent);
        a.revocations.revoke("n1", now);
        let uptime = "/switchyard.agent.v1.NativeProcessService/Uptime";
        assert_eq!(
            reason(a.verdict(Some(&fresh), uptime)),
            "CERTIFICATE_REVOKED"
        );
        assert_eq!(reason(a.verdict(Some(&other), uptime)), "NOT_AUTHORIZED");
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_name("node1"));
        assert!(valid_name("web-01.eu_west"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Node1"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
