//! The traffic of the agent's workers in its `/metrics`: web responses by service path and
//! status class, their latency and body bytes, open connections; router sessions by realm,
//! WAMP messages by type, router links configured and up.
//!
//! Each worker counts its own traffic (relaxed atomics on its hot path: `web/traffic.rs`,
//! `wamp/traffic.rs`); the agent fetches the counters at scrape time over the worker's
//! control socket (`GetWebTransport`; `GetRouterTransport`, `ListRouterRealms`,
//! `ListRouterLinks`), all workers at once, each within [`FETCH_TIMEOUT`]. Nothing crosses the
//! socket between scrapes, and a worker that does not answer in time is left out of this
//! scrape only. Series are labelled with the worker's owner labels (cluster and worker group
//! oids, set by the master's monitors), the worker id and, for web workers, the service path:
//! all bounded by configuration, never by requests.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use switchyard::pb::agent::v1::{self as pb, WorkerStatus, WorkerType};

use crate::Agent;
use crate::worker::Worker;

/// Time a worker has to hand over its counters.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// The monitors' label naming a worker's cluster (its oid).
const CLUSTER_LABEL: &str = "switchyard.cluster";
/// The monitors' label naming a router worker's worker group (its oid).
const GROUP_LABEL: &str = "switchyard.workergroup";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebLabels {
    cluster_oid: String,
    worker: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    cluster_oid: String,
    worker: String,
    path: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    cluster_oid: String,
    worker: String,
    path: String,
    class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouterLabels {
    cluster_oid: String,
    workergroup_oid: String,
    worker: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RealmLabels {
    cluster_oid: String,
    workergroup_oid: String,
    worker: String,
    realm: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    cluster_oid: String,
    workergroup_oid: String,
    worker: String,
    r#type: String,
}

/// A histogram whose buckets were counted elsewhere (by the worker): set once per scrape.
#[derive(Debug, Default)]
struct Recorded(Mutex<Snapshot>);

/// Sum, count, and (upper bound, non-cumulative count) per bucket.
#[derive(Debug, Default)]
struct Snapshot {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Recorded {
    fn set(&self, t: &pb::WebServiceTraffic) {
        let bounds = t
            .latency_bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(t.latency_counts.iter().copied()).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Snapshot {
            sum: t.latency_sum,
            count,
            buckets,
        };
    }
}

impl TypedMetric for Recorded {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Recorded {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        encoder.encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// What one worker handed over.
enum Fetched {
    Web(pb::WebTransportStatus),
    Router {
        transport: pb::RouterTransportStatus,
        realms: Vec<pb::RouterRealm>,
        links: Vec<pb::RouterLink>,
    },
}

async fn fetch(worker: &Worker) -> Option<Fetched> {
    let mut controls = worker.controls();
    let worker_id = worker.id().to_owned();
    let fetching = async {
        match worker.kind() {
            WorkerType::Web => {
                let req = pb::GetWebTransportRequest { worker_id };
                let status = controls.get_web_transport(req).await.ok()?.into_inner();
                Some(Fetched::Web(status.transport?))
            }
            WorkerType::Router => {
                let transport = controls
                    .get_router_transport(pb::GetRouterTransportRequest {
                        worker_id: worker_id.clone(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .transport?;
                let realms = controls
                    .list_router_realms(pb::ListRouterRealmsRequest {
                        worker_id: worker_id.clone(),
                    })
                    .await
                    .map(|r| r.into_inner().realms)
                    .unwrap_or_default();
                let links = controls
                    .list_router_links(pb::ListRouterLinksRequest { worker_id })
                    .await
                    .map(|r| r.into_inner().links)
                    .unwrap_or_default();
                Some(Fetched::Router {
                    transport,
                    realms,
                    links,
                })
            }
            WorkerType::Unspecified => None,
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetching)
        .await
        .ok()
        .flatten()
}

/// The families of the web workers.
#[derive(Default)]
struct Web {
    responses: Family<ClassLabels, Counter>,
    duration: Family<PathLabels, Recorded>,
    sent: Family<PathLabels, Counter>,
    connections: Family<WebLabels, Gauge>,
}

impl Web {
    fn add(&self, worker: &Worker, status: &pb::WebTransportStatus) {
        let cluster_oid = label(worker, CLUSTER_LABEL);
        self.connections
            .get_or_create(&WebLabels {
                cluster_oid: cluster_oid.clone(),
                worker: worker.id().to_owned(),
            })
            .set(i64::from(status.open_connections));
        for t in &status.traffic {
            let labels = PathLabels {
                cluster_oid: cluster_oid.clone(),
                worker: worker.id().to_owned(),
                path: t.path.clone(),
            };
            for (class, n) in &t.responses {
                self.responses
                    .get_or_create(&ClassLabels {
                        cluster_oid: cluster_oid.clone(),
                        worker: worker.id().to_owned(),
                        path: t.path.clone(),
                        class: class.clone(),
                    })
                    .inc_by(*n);
            }
            self.duration.get_or_create(&labels).set(t);
            self.sent.get_or_create(&labels).inc_by(t.bytes_sent);
        }
    }

    fn register(self, r: &mut Registry) {
        r.register(
            "switchyard_web_responses",
            "Responses of a web worker's service (path \"none\": no service matched), by status class",
            self.responses,
        );
        r.register(
            "switchyard_web_request_duration_seconds",
            "Time from a request's arrival to its response headers, by web service",
            self.duration,
        );
        r.register(
            "switchyard_web_sent_bytes",
            "Response body bytes a web worker's service sent",
            self.sent,
        );
        r.register(
            "switchyard_web_open_connections",
            "Client connections a web worker has open now",
            self.connections,
        );
    }
}

/// The families of the router workers.
#[derive(Default)]
struct Routers {
    sessions: Family<RealmLabels, Gauge>,
    received: Family<TypeLabels, Counter>,
    sent: Family<TypeLabels, Counter>,
    links: Family<RouterLabels, Gauge>,
    links_up: Family<RouterLabels, Gauge>,
}

impl Routers {
    fn add(
        &self,
        worker: &Worker,
        transport: &pb::RouterTransportStatus,
        realms: &[pb::RouterRealm],
        links: &[pb::RouterLink],
    ) {
        let labels = RouterLabels {
            cluster_oid: label(worker, CLUSTER_LABEL),
            workergroup_oid: label(worker, GROUP_LABEL),
            worker: worker.id().to_owned(),
        };
        for realm in realms {
            self.sessions
                .get_or_create(&RealmLabels {
                    cluster_oid: labels.cluster_oid.clone(),
                    workergroup_oid: labels.workergroup_oid.clone(),
                    worker: labels.worker.clone(),
                    realm: realm.name.clone(),
                })
                .set(i64::from(realm.sessions));
        }
        for (family, counts) in [
            (&self.received, &transport.messages_received),
            (&self.sent, &transport.messages_sent),
        ] {
            for (kind, n) in counts {
                family
                    .get_or_create(&TypeLabels {
                        cluster_oid: labels.cluster_oid.clone(),
                        workergroup_oid: labels.workergroup_oid.clone(),
                        worker: labels.worker.clone(),
                        r#type: kind.clone(),
                    })
                    .inc_by(*n);
            }
        }
        let up = links.iter().filter(|l| l.connected).count();
        self.links
            .get_or_create(&labels)
            .set(i64::try_from(links.len()).unwrap_or(i64::MAX));
        self.links_up
            .get_or_create(&labels)
            .set(i64::try_from(up).unwrap_or(i64::MAX));
    }

    fn register(self, r: &mut Registry) {
        r.register(
            "switchyard_router_sessions",
            "WAMP client sessions joined to a router worker's realm now (router links not counted)",
            self.sessions,
        );
        r.register(
            "switchyard_router_messages_received",
            "WAMP messages a router worker received, by message type",
            self.received,
        );
        r.register(
            "switchyard_router_messages_sent",
            "WAMP messages a router worker sent, by message type",
            self.sent,
        );
        r.register(
            "switchyard_router_links",
            "Router links a router worker was told to keep to its group's other workers",
            self.links,
        );
        r.register(
            "switchyard_router_links_up",
            "Router links of a router worker connected now",
            self.links_up,
        );
    }
}

fn label(worker: &Worker, key: &str) -> String {
    worker.labels().get(key).cloned().unwrap_or_default()
}

/// Fetches every started worker's counters and adds the traffic families to `r`.
pub async fn register(r: &mut Registry, agent: &Agent) {
    let workers: Vec<_> = agent
        .workers
        .list()
        .into_iter()
        .filter(|w| w.status() == WorkerStatus::Started)
        .collect();
    let fetched = futures::future::join_all(workers.iter().map(|w| fetch(w))).await;
    let (web, routers) = (Web::default(), Routers::default());
    for (worker, fetched) in workers.iter().zip(fetched) {
        match fetched {
            Some(Fetched::Web(status)) => web.add(worker, &status),
            Some(Fetched::Router {
                transport,
                realms,
                links,
            }) => routers.add(worker, &transport, &realms, &links),
            None => {}
        }
    }
    web.register(r);
    routers.register(r);
}
