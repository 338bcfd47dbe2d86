//! Who is calling, and may they (docs/security.md, "Principals and roles").
//!
//! Every certificate of the cluster CA carries one URI SAN naming its principal:
//! `spiffe://switchyard/master`, `spiffe://switchyard/node/<authid>` or
//! `spiffe://switchyard/admin/<name>`. The TLS handshake has already proven the certificate
//! (no certificate or a foreign CA never gets here); [`AuthLayer`] then reads the principal from
//! the peer certificate, checks the [`Policy`] of the server against the gRPC method path, and
//! either rejects with PERMISSION_DENIED (reason `NOT_AUTHORIZED`) or passes the request on with
//! the [`Principal`] in its extensions for handlers that need it (`who`, heartbeat authid).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::error::{Reason, status};

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
const NODE_FACING: &[&str] = &["/switchyard.master.v1.NodeService/Heartbeat"];

/// Services any authenticated caller may use: they reveal nothing and change nothing.
const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

impl Policy {
    /// Whether `principal` may call the gRPC method at `path` (`/package.Service/Method`).
    pub fn allows(self, principal: &Principal, path: &str) -> bool {
        if OPEN_SERVICES.iter().any(|p| path.starts_with(p)) {
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
    /// Plaintext server (`--insecure`): there is no certificate, every caller is
    /// [`Principal::insecure`], an admin.
    insecure: bool,
}

impl AuthLayer {
    /// Enforce `policy` on requests over mTLS.
    pub fn new(policy: Policy) -> Self {
        AuthLayer {
            inner: Arc::new(AuthConfig {
                policy,
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

impl AuthService<()> {
    fn principal_of<B>(_config: &AuthConfig, request: &http::Request<B>) -> Option<Principal> {
        let info = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()?;
        let certs = info.peer_certs()?;
        cached_principal(certs.first()?.as_ref())
    }
}

/// Principals of recently seen certificates: parsing X.509 on every call would cost more than
/// the call itself. Bounded; cleared when full (a cluster has few distinct certificates).
fn cached_principal(der: &[u8]) -> Option<Principal> {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    const MAX: usize = 4096;
    type Cache = HashMap<Vec<u8>, Option<Principal>, std::hash::BuildHasherDefault<TailHasher>>;
    static CACHE: OnceLock<RwLock<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(RwLock::default);
    if let Some(hit) = cache.read().unwrap_or_else(|p| p.into_inner()).get(der) {
        return hit.clone();
    }
    let principal = Principal::from_certificate(der);
    let mut map = cache.write().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX {
        map.clear();
    }
    map.insert(der.to_vec(), principal.clone());
    principal
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
        let path = request.uri().path();
        let verdict = match AuthService::principal_of(&self.config, &request) {
            None => Err(status(
                Reason::NotAuthorized,
                "the client certificate names no Switchyard principal (URI SAN spiffe://switchyard/...)",
            )),
            Some(principal) if !self.config.policy.allows(&principal, path) => {
                tracing::warn!(%principal, path, "permission denied");
                Err(status(
                    Reason::NotAuthorized,
                    format!(
                        "{principal} (role {}) may not call {path}",
                        principal.role.as_str()
                    ),
                ))
            }
            Some(principal) => Ok(principal),
        };
        match verdict {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
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
    }

    #[test]
    fn agent_policy_follows_the_spec_table() {
        let np = "/switchyard.agent.v1.NativeProcessService/Uptime";
        assert!(Policy::Agent.allows(&Principal::admin("a"), np));
        assert!(Policy::Agent.allows(&Principal::master(), np));
        assert!(!Policy::Agent.allows(&Principal::node("n1"), np));
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
