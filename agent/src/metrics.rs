//! The agent's `/metrics`: per-process CPU seconds, resident memory, fds and threads of the agent
//! ("controller") and each live worker, worker restarts, workers by status (`restarting`
//! included), the expiry of the node's certificate, RPC counts and latencies, and the traffic
//! of its web and router workers ([`traffic`]). docs/operations.md lists every family.

mod traffic;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use switchyard::metrics::{RpcMetrics, Scrape};
use switchyard::pb::agent::v1::{WorkerStatus, WorkerType};
use switchyard::tls::CertSwap;

use crate::Agent;
use crate::process::stats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    worker: String,
    r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    node: String,
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The agent's scrape; `certs` is the certificate its server presents (none without mTLS).
pub fn scrape(agent: Arc<Agent>, rpc: Arc<RpcMetrics>, certs: Option<Arc<CertSwap>>) -> Scrape {
    Arc::new(move || {
        let (agent, rpc, certs) = (agent.clone(), rpc.clone(), certs.clone());
        Box::pin(async move {
            let mut r = Registry::default();
            rpc.register(&mut r);
            processes(&mut r, &agent);
            switchyard::metrics::register_certificate_validity(&mut r, "node", certs.as_deref());
            traffic::register(&mut r, &agent).await;
            r
        })
    })
}

fn processes(r: &mut Registry, agent: &Agent) {
    let info = Family::<AgentLabels, Gauge>::default();
    info.get_or_create(&AgentLabels {
        node: agent.authid.clone(),
        version: switchyard::VERSION.to_owned(),
    })
    .set(1);
    r.register(
        "switchyard_agent_info",
        "1, labelled with the agent's node authid and version (join on instance to name a node)",
        info,
    );
    let cpu = Family::<ProcessLabels, Counter<f64>>::default();
    let rss = Family::<ProcessLabels, Gauge>::default();
    let fds = Family::<ProcessLabels, Gauge>::default();
    let threads = Family::<ProcessLabels, Gauge>::default();
    let restarts = Family::<ProcessLabels, Counter>::default();
    let by_status = Family::<StatusLabels, Gauge>::default();

    let mut processes = vec![(
        crate::controller::CONTROLLER.to_owned(),
        "agent".to_owned(),
        std::process::id(),
    )];
    for w in agent.workers.list() {
        let status = w.status();
        by_status
            .get_or_create(&StatusLabels {
                status: status
                    .as_str_name()
                    .trim_start_matches("WORKER_STATUS_")
                    .to_ascii_lowercase(),
            })
            .inc();
        let kind = match w.kind() {
            WorkerType::Web => "web",
            WorkerType::Router => "router",
            WorkerType::Unspecified => "unknown",
        };
        let labels = ProcessLabels {
            worker: w.id().to_owned(),
            r#type: kind.to_owned(),
        };
        restarts
            .get_or_create(&labels)
            .inc_by(agent.workers.starts(w.id()).saturating_sub(1));
        if status == WorkerStatus::Started && w.pid() != 0 {
            processes.push((w.id().to_owned(), kind.to_owned(), w.pid()));
        }
    }
    for (worker, kind, pid) in processes {
        let Ok(s) = stats::read(pid) else { continue };
        let labels = ProcessLabels {
            worker,
            r#type: kind,
        };
        cpu.get_or_create(&labels).inc_by(s.user + s.system);
        rss.get_or_create(&labels).set(s.resident as i64);
        fds.get_or_create(&labels).set(i64::from(s.fds));
        threads.get_or_create(&labels).set(i64::from(s.threads));
    }
    r.register(
        "switchyard_process_cpu_seconds",
        "CPU time (user + system) of the agent (worker=\"controller\") and each running worker",
        cpu,
    );
    r.register(
        "switchyard_process_resident_bytes",
        "Resident memory of the agent and each running worker",
        rss,
    );
    r.register(
        "switchyard_process_fds",
        "Open file descriptors of the agent and each running worker",
        fds,
    );
    r.register(
        "switchyard_process_threads",
        "Threads of the agent and each running worker",
        threads,
    );
    r.register(
        "switchyard_worker_restarts",
        "Times a worker id was started again: by its agent after a failure (counted across agent restarts for adopted workers) or by StartWorker",
        restarts,
    );
    r.register(
        "switchyard_workers",
        "Workers known to the agent, by status",
        by_status,
    );
}
