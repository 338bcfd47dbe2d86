//! What a running router worker serves, brought in line with its worker group: the WAMP
//! transport (a free port of the group's range, with the group's link secret), the group's
//! realms, and a router link to every other placed worker of the group for every realm (a full
//! mesh, re-pointed when a peer moves). Observed first, changed only where it differs.

use std::collections::BTreeMap;

use switchyard::error::reason_of;
use switchyard::pb::agent::v1::node_controller_service_client::NodeControllerServiceClient;
use switchyard::pb::agent::v1::{self as apb};
use switchyard::pb::master::v1::RouterWorkerGroup;
use tonic::transport::Channel;

use crate::agents::call;
use crate::core::Core;
use crate::store::{StoreError, StoreExt, Txn, keys};

/// The realms of a group (default `realm1`).
pub fn realms(group: &RouterWorkerGroup) -> Vec<String> {
    if group.realms.is_empty() {
        vec!["realm1".to_owned()]
    } else {
        group.realms.clone()
    }
}

/// A placed worker of the group with a known port.
#[derive(Debug, Clone)]
pub struct PeerWorker {
    /// Its worker id.
    pub worker: String,
    /// Its node's address.
    pub host: String,
    /// Its WAMP port.
    pub port: u32,
}

/// The secrets the groups' links authenticate with, by group oid: created once (one
/// transaction for every group that has none yet) and kept in the store.
pub async fn link_secrets(
    core: &Core,
    cluster: &str,
    groups: &[RouterWorkerGroup],
) -> Result<BTreeMap<String, String>, String> {
    for _ in 0..3 {
        let mut secrets = BTreeMap::new();
        let mut txn = Txn::new();
        for g in groups {
            let key = keys::link_secret(cluster, &g.oid);
            match core.store.load_str(&key).map_err(|e| e.to_string())? {
                Some(s) => {
                    secrets.insert(g.oid.clone(), s);
                }
                None => {
                    let secret = format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    );
                    txn = txn
                        .absent(key.clone())
                        .put(key, secret.clone().into_bytes());
                    secrets.insert(g.oid.clone(), secret);
                }
            }
        }
        if txn.puts.is_empty() {
            return Ok(secrets);
        }
        match core.store.commit(txn).await {
            Ok(()) => return Ok(secrets),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("cannot create the groups' link secrets".to_owned())
}

/// The desired links of `worker`: to every other peer, for every realm.
pub fn desired_links(
    worker: &str,
    realms: &[String],
    peers: &[PeerWorker],
) -> BTreeMap<String, apb::RouterLink> {
    let mut links = BTreeMap::new();
    for p in peers.iter().filter(|p| p.worker != worker) {
        for r in realms {
            let id = format!("{}@{}", p.worker, r);
            links.insert(
                id.clone(),
                apb::RouterLink {
                    id,
                    realm: r.clone(),
                    peer_host: p.host.clone(),
                    peer_port: p.port,
                    peer_path: "/ws".to_owned(),
                    connected: false,
                },
            );
        }
    }
    links
}

/// Why [`configure`] failed.
#[derive(Debug)]
pub struct ConfigureError {
    /// What failed.
    pub message: String,
    /// The node did not answer in time (or at all): its other workers are skipped this
    /// iteration, so that one partitioned node delays nobody by more than one deadline.
    pub unreachable: bool,
}

/// What [`configure`] found and did.
#[derive(Debug, Default)]
pub struct Configured {
    /// The worker's WAMP port.
    pub port: u32,
    /// Whether anything had to change.
    pub acted: bool,
}

/// Brings router worker `worker` in line with `group` and its `peers`. The router controls
/// answer at once inside the worker, so every call has the observation deadline.
pub async fn configure(
    nc: &mut NodeControllerServiceClient<Channel>,
    worker: &str,
    group: &RouterWorkerGroup,
    secret: &str,
    peers: &[PeerWorker],
) -> Result<Configured, ConfigureError> {
    let fail = |what: &str, s: tonic::Status| ConfigureError {
        message: format!("{worker}: {what}: {}", s.message()),
        unreachable: super::router::unreachable(&s),
    };
    let mut acted = false;
    let port = match call(nc.get_router_transport(apb::GetRouterTransportRequest {
        worker_id: worker.to_owned(),
    }))
    .await
    {
        Ok(r) => r.transport.map(|t| t.port).unwrap_or_default(),
        Err(s) if reason_of(&s).as_deref() == Some("NOT_STARTED") => {
            acted = true;
            let range = group.port_range.unwrap_or_default();
            call(nc.start_router_transport(apb::StartRouterTransportRequest {
                worker_id: worker.to_owned(),
                interface: String::new(),
                port_range_start: range.start,
                port_range_end: range.end,
                link_secret: secret.to_owned(),
            }))
            .await
            .map_err(|s| fail("StartRouterTransport", s))?
            .transport
            .map(|t| t.port)
            .unwrap_or_default()
        }
        Err(s) => return Err(fail("GetRouterTransport", s)),
    };

    let wanted = realms(group);
    let running = call(nc.list_router_realms(apb::ListRouterRealmsRequest {
        worker_id: worker.to_owned(),
    }))
    .await
    .map_err(|s| fail("ListRouterRealms", s))?
    .realms;
    for r in wanted
        .iter()
        .filter(|r| !running.iter().any(|x| &x.name == *r))
    {
        acted = true;
        call(nc.start_router_realm(apb::StartRouterRealmRequest {
            worker_id: worker.to_owned(),
            realm: r.clone(),
        }))
        .await
        .map_err(|s| fail("StartRouterRealm", s))?;
    }
    for r in running.iter().filter(|x| !wanted.contains(&x.name)) {
        acted = true;
        call(nc.stop_router_realm(apb::StopRouterRealmRequest {
            worker_id: worker.to_owned(),
            realm: r.name.clone(),
        }))
        .await
        .map_err(|s| fail("StopRouterRealm", s))?;
    }

    let desired = desired_links(worker, &wanted, peers);
    let existing = call(nc.list_router_links(apb::ListRouterLinksRequest {
        worker_id: worker.to_owned(),
    }))
    .await
    .map_err(|s| fail("ListRouterLinks", s))?
    .links;
    for l in &existing {
        let same = desired.get(&l.id).is_some_and(|d| {
            d.realm == l.realm
                && d.peer_host == l.peer_host
                && d.peer_port == l.peer_port
                && d.peer_path == l.peer_path
        });
        if !desired.contains_key(&l.id) {
            acted = true;
            call(nc.stop_router_link(apb::StopRouterLinkRequest {
                worker_id: worker.to_owned(),
                link_id: l.id.clone(),
            }))
            .await
            .map_err(|s| fail("StopRouterLink", s))?;
        } else if !same {
            // StartRouterLink re-points a link whose target changed.
            acted = true;
            call(nc.start_router_link(apb::StartRouterLinkRequest {
                worker_id: worker.to_owned(),
                link: desired.get(&l.id).cloned(),
            }))
            .await
            .map_err(|s| fail("StartRouterLink", s))?;
        }
    }
    for (id, d) in &desired {
        if !existing.iter().any(|l| &l.id == id) {
            acted = true;
            call(nc.start_router_link(apb::StartRouterLinkRequest {
                worker_id: worker.to_owned(),
                link: Some(d.clone()),
            }))
            .await
            .map_err(|s| fail("StartRouterLink", s))?;
        }
    }
    Ok(Configured { port, acted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(w: &str, port: u32) -> PeerWorker {
        PeerWorker {
            worker: w.to_owned(),
            host: "10.0.0.1".to_owned(),
            port,
        }
    }

    #[test]
    fn links_form_a_full_mesh_per_realm_without_self_links() {
        let peers = [peer("g_1", 10000), peer("g_2", 10001), peer("g_3", 10002)];
        let realms = vec!["realm1".to_owned(), "realm2".to_owned()];
        let links = desired_links("g_2", &realms, &peers);
        let ids: Vec<&str> = links.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            ["g_1@realm1", "g_1@realm2", "g_3@realm1", "g_3@realm2"]
        );
        assert_eq!(links["g_3@realm2"].peer_port, 10002);
        assert_eq!(links["g_3@realm2"].realm, "realm2");
    }

    #[test]
    fn a_group_without_realms_serves_realm1() {
        assert_eq!(realms(&RouterWorkerGroup::default()), ["realm1"]);
    }
}
