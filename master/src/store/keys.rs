//! The key space: one prefix per table, then the row's identity. Object ids are fixed-length
//! UUID strings, so `prefix/<oid>/` never matches another cluster's rows.

/// `wc/<oid>` → web cluster.
pub fn webcluster(oid: &str) -> Vec<u8> {
    format!("wc/{oid}").into_bytes()
}
/// Prefix of every web cluster.
pub const WEBCLUSTERS: &[u8] = b"wc/";
/// `wcname/<name>` → web cluster oid.
pub fn webcluster_name(name: &str) -> Vec<u8> {
    format!("wcname/{name}").into_bytes()
}
/// `wcn/<cluster>/<node>` → web cluster membership.
pub fn webcluster_node(cluster: &str, node: &str) -> Vec<u8> {
    format!("wcn/{cluster}/{node}").into_bytes()
}
/// Prefix of a web cluster's memberships.
pub fn webcluster_nodes(cluster: &str) -> Vec<u8> {
    format!("wcn/{cluster}/").into_bytes()
}
/// `ws/<cluster>/<service>` → web service.
pub fn webservice(cluster: &str, service: &str) -> Vec<u8> {
    format!("ws/{cluster}/{service}").into_bytes()
}
/// Prefix of a web cluster's services.
pub fn webservices(cluster: &str) -> Vec<u8> {
    format!("ws/{cluster}/").into_bytes()
}
/// `wspath/<cluster>/<path>` → web service oid.
pub fn webservice_path(cluster: &str, path: &str) -> Vec<u8> {
    format!("wspath/{cluster}/{path}").into_bytes()
}
/// `rc/<oid>` → router cluster.
pub fn routercluster(oid: &str) -> Vec<u8> {
    format!("rc/{oid}").into_bytes()
}
/// Prefix of every router cluster.
pub const ROUTERCLUSTERS: &[u8] = b"rc/";
/// `rcname/<name>` → router cluster oid.
pub fn routercluster_name(name: &str) -> Vec<u8> {
    format!("rcname/{name}").into_bytes()
}
/// `rcn/<cluster>/<node>` → router cluster membership.
pub fn routercluster_node(cluster: &str, node: &str) -> Vec<u8> {
    format!("rcn/{cluster}/{node}").into_bytes()
}
/// Prefix of a router cluster's memberships.
pub fn routercluster_nodes(cluster: &str) -> Vec<u8> {
    format!("rcn/{cluster}/").into_bytes()
}
/// `wg/<cluster>/<group>` → worker group.
pub fn workergroup(cluster: &str, group: &str) -> Vec<u8> {
    format!("wg/{cluster}/{group}").into_bytes()
}
/// Prefix of a router cluster's worker groups.
pub fn workergroups(cluster: &str) -> Vec<u8> {
    format!("wg/{cluster}/").into_bytes()
}
/// `wgname/<cluster>/<name>` → worker group oid.
pub fn workergroup_name(cluster: &str, name: &str) -> Vec<u8> {
    format!("wgname/{cluster}/{name}").into_bytes()
}
/// `pl/<cluster>/<group>/<placement>` → placement.
pub fn placement(cluster: &str, group: &str, placement: &str) -> Vec<u8> {
    format!("pl/{cluster}/{group}/{placement}").into_bytes()
}
/// Prefix of a router cluster's placements.
pub fn placements(cluster: &str) -> Vec<u8> {
    format!("pl/{cluster}/").into_bytes()
}
/// Prefix of a worker group's placements.
pub fn group_placements(cluster: &str, group: &str) -> Vec<u8> {
    format!("pl/{cluster}/{group}/").into_bytes()
}
/// `wgglobal/<name>` → `<cluster oid>/<group oid>`: worker group names are unique across router
/// clusters, because worker ids (`<group name>_<n>`) share one namespace on every node.
pub fn workergroup_global(name: &str) -> Vec<u8> {
    format!("wgglobal/{name}").into_bytes()
}
/// `wgsecret/<cluster>/<group>` → the worker group's router-link secret.
pub fn link_secret(cluster: &str, group: &str) -> Vec<u8> {
    format!("wgsecret/{cluster}/{group}").into_bytes()
}
/// Prefix of a router cluster's link secrets.
pub fn link_secrets(cluster: &str) -> Vec<u8> {
    format!("wgsecret/{cluster}/").into_bytes()
}
/// `node/<oid>` → node.
pub fn node(oid: &str) -> Vec<u8> {
    format!("node/{oid}").into_bytes()
}
/// Prefix of every node.
pub const NODES: &[u8] = b"node/";
/// `nodename/<authid>` → node oid.
pub fn node_name(authid: &str) -> Vec<u8> {
    format!("nodename/{authid}").into_bytes()
}
/// `ev/<time ns, 20 digits>-<unique>` → an event as Watch delivers it (the newest few thousand;
/// see `events.rs`).
pub const EVENTS: &[u8] = b"ev/";
/// `jointoken/<id>` → join token (its public record and the digest of its secret).
pub fn join_token(id: &str) -> Vec<u8> {
    format!("jointoken/{id}").into_bytes()
}
/// Prefix of every join token.
pub const JOIN_TOKENS: &[u8] = b"jointoken/";
/// `revoked/<authid>` → the revocation of a node's certificates (`RevokedNode`).
pub fn revoked_node(authid: &str) -> Vec<u8> {
    format!("revoked/{authid}").into_bytes()
}
/// Prefix of every node revocation.
pub const REVOKED_NODES: &[u8] = b"revoked/";
/// `nodelive/<oid>` → whether the leader sees node `oid` online (a `Node` with only `status` and
/// `last_heartbeat`), written when that changes: followers answer with it, and a new leader
/// starts from it (docs/operations.md, "Several masters").
pub fn node_live(oid: &str) -> Vec<u8> {
    format!("nodelive/{oid}").into_bytes()
}
/// Prefix of every node's liveness.
pub const NODE_LIVENESS: &[u8] = b"nodelive/";
/// `ctl/leader` → the leader (`ControlPlaneMember`), on the leader's etcd lease.
pub const LEADER: &[u8] = b"ctl/leader";
/// `ctl/master/<name>` → a master that is up (`ControlPlaneMember`), on its etcd lease.
pub fn master(name: &str) -> Vec<u8> {
    format!("ctl/master/{name}").into_bytes()
}
/// Prefix of every master that is up.
pub const MASTERS: &[u8] = b"ctl/master/";
