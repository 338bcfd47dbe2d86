//! The web or router configuration last applied to a worker through its agent (transport,
//! services; transport, realms, links), kept in the worker's record. When the agent starts a
//! failed worker again it replays it, so the new process serves as the old one did before it
//! reports started (a monitor finds nothing to do, and serving is not interrupted until its
//! next pass). A router worker's transport is replayed on the port it had, so that its
//! placement stays right.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use switchyard::pb::agent::v1::node_controller_service_client::NodeControllerServiceClient;
use switchyard::pb::agent::v1::{self as pb};
use tonic::transport::Channel;

use super::record::Pb;

/// What was applied to one worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The web listener.
    #[serde(default)]
    pub web_transport: Option<Pb<pb::WebTransport>>,
    /// The web services, by path.
    #[serde(default)]
    pub web_services: BTreeMap<String, Pb<pb::WebService>>,
    /// The router listener, its port range narrowed to the port it got.
    #[serde(default)]
    pub router_transport: Option<Pb<pb::StartRouterTransportRequest>>,
    /// The router realms.
    #[serde(default)]
    pub router_realms: BTreeSet<String>,
    /// The router links, by id.
    #[serde(default)]
    pub router_links: BTreeMap<String, Pb<pb::RouterLink>>,
}

/// One successful control call, as it changes what is applied.
#[derive(Debug, Clone)]
pub enum Change {
    /// StartWebTransport (`Some`) or StopWebTransport.
    WebTransport(Option<pb::WebTransport>),
    /// StartWebService (`Some`) or StopWebService on a path.
    WebService(String, Option<pb::WebService>),
    /// StartRouterTransport, with the port it got.
    RouterTransport(pb::StartRouterTransportRequest, u32),
    /// StartRouterRealm (`true`) or StopRouterRealm.
    RouterRealm(String, bool),
    /// StartRouterLink (`Some`) or StopRouterLink of a link id.
    RouterLink(String, Option<pb::RouterLink>),
}

impl Applied {
    /// Applies `change`.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::WebTransport(t) => self.web_transport = t.map(Pb),
            Change::WebService(path, Some(s)) => {
                self.web_services.insert(path, Pb(s));
            }
            Change::WebService(path, None) => {
                self.web_services.remove(&path);
            }
            Change::RouterTransport(mut request, port) => {
                request.worker_id.clear();
                request.port_range_start = port;
                request.port_range_end = port;
                self.router_transport = Some(Pb(request));
            }
            Change::RouterRealm(realm, true) => {
                self.router_realms.insert(realm);
            }
            Change::RouterRealm(realm, false) => {
                self.router_realms.remove(&realm);
            }
            Change::RouterLink(id, Some(link)) => {
                self.router_links.insert(id, Pb(link));
            }
            Change::RouterLink(id, None) => {
                self.router_links.remove(&id);
            }
        }
    }

    /// Whether nothing was applied.
    pub fn is_empty(&self) -> bool {
        *self == Applied::default()
    }

    /// Replays everything on worker `id` through `controls`, transport first; returns what
    /// failed (each failure is skipped, the rest still applied).
    pub async fn replay(
        &self,
        id: &str,
        controls: &mut NodeControllerServiceClient<Channel>,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        let worker_id = || id.to_owned();
        if let Some(Pb(t)) = &self.web_transport {
            let req = pb::StartWebTransportRequest {
                worker_id: worker_id(),
                transport: Some(t.clone()),
            };
            if let Err(s) = controls.start_web_transport(req).await {
                failed.push(format!("web transport: {}", s.message()));
            }
        }
        for (path, Pb(s)) in &self.web_services {
            let req = pb::StartWebServiceRequest {
                worker_id: worker_id(),
                service: Some(s.clone()),
            };
            if let Err(s) = controls.start_web_service(req).await {
                failed.push(format!("web service {path}: {}", s.message()));
            }
        }
        if let Some(Pb(t)) = &self.router_transport {
            let req = pb::StartRouterTransportRequest {
                worker_id: worker_id(),
                ..t.clone()
            };
            if let Err(s) = controls.start_router_transport(req).await {
                failed.push(format!("router transport: {}", s.message()));
            }
        }
        for realm in &self.router_realms {
            let req = pb::StartRouterRealmRequest {
                worker_id: worker_id(),
                realm: realm.clone(),
            };
            if let Err(s) = controls.start_router_realm(req).await {
                failed.push(format!("realm {realm}: {}", s.message()));
            }
        }
        for (link_id, Pb(link)) in &self.router_links {
            let req = pb::StartRouterLinkRequest {
                worker_id: worker_id(),
                link: Some(link.clone()),
            };
            if let Err(s) = controls.start_router_link(req).await {
                failed.push(format!("link {link_id}: {}", s.message()));
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_accumulate_and_undo() {
        let mut a = Applied::default();
        a.apply(Change::WebTransport(Some(pb::WebTransport {
            tcp_port: 8080,
            ..Default::default()
        })));
        a.apply(Change::WebService(
            "/".into(),
            Some(pb::WebService::default()),
        ));
        a.apply(Change::WebService(
            "/x".into(),
            Some(pb::WebService::default()),
        ));
        a.apply(Change::WebService("/x".into(), None));
        assert_eq!(a.web_services.keys().collect::<Vec<_>>(), ["/"]);
        a.apply(Change::WebTransport(None));
        a.apply(Change::WebService("/".into(), None));
        assert!(a.is_empty());

        let range = pb::StartRouterTransportRequest {
            worker_id: "r1".into(),
            port_range_start: 10000,
            port_range_end: 10100,
            link_secret: "s".into(),
            ..Default::default()
        };
        a.apply(Change::RouterTransport(range, 10007));
        let t = &a.router_transport.as_ref().unwrap().0;
        assert_eq!((t.port_range_start, t.port_range_end), (10007, 10007));
        assert_eq!(t.link_secret, "s");
        a.apply(Change::RouterRealm("realm1".into(), true));
        a.apply(Change::RouterLink(
            "p@realm1".into(),
            Some(pb::RouterLink::default()),
        ));
        let json = serde_json::to_string(&a).unwrap();
        let back: Applied = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }
}
