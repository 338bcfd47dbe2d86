//! Several masters on one real etcd (docs/operations.md, "Several masters"): one leader runs
//! the monitors; kill -9 or SIGSTOP it and a follower leads within seconds, no node goes
//! offline and no healthy worker moves; a deposed leader's agent calls are refused by epoch.
//! Agents are given every master's address (one of them down) and find the leader.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{Pki, Proc, channel, eventually_async};
use switchyard::pb::agent::v1::{
    self as apb, node_controller_service_client::NodeControllerServiceClient,
};
use switchyard::pb::master::v1::control_plane_service_client::ControlPlaneServiceClient;
use switchyard::pb::master::v1::web_cluster_service_client::WebClusterServiceClient;
use switchyard::pb::master::v1::{self as pb, ClusterStatus, MasterRole};
use tonic::transport::Channel;

const MASTERS: [&str; 3] = ["m1", "m2", "m3"];
const NODES: [&str; 2] = ["node1", "node2"];

struct ControlPlane {
    pki: Pki,
    etcd: Etcd,
    masters: BTreeMap<String, Proc>,
    agents: BTreeMap<String, Proc>,
    /// Each master's listen address (a restarted master comes back on it).
    listen: BTreeMap<String, String>,
}

impl ControlPlane {
    async fn new() -> ControlPlane {
        let pki = Pki::new(&NODES);
        for m in MASTERS {
            pki.issue("master", m);
        }
        let etcd = Etcd::start(1);
        let mut masters = BTreeMap::new();
        let mut listen = BTreeMap::new();
        for m in MASTERS {
            let addr = format!("127.0.0.1:{}", common::stable_port());
            masters.insert(m.to_owned(), spawn_master(&pki, &etcd, m, &addr));
            listen.insert(m.to_owned(), addr);
        }
        // The first address answers nothing: agents must move on to the others.
        let down = format!("127.0.0.1:{}", common::stable_port());
        let list: Vec<String> = std::iter::once(down)
            .chain(masters.values().map(|m| m.addr.to_string()))
            .collect();
        let agents = NODES
            .iter()
            .map(|n| {
                let mut cmd = Command::new(common::agent_bin());
                cmd.args(["serve", "--listen", "127.0.0.1:0", "--name", n])
                    .args(["--master", &list.join(","), "--pki-dir"])
                    .arg(&pki.path);
                (n.to_string(), Proc::spawn(cmd))
            })
            .collect();
        ControlPlane {
            pki,
            etcd,
            masters,
            agents,
            listen,
        }
    }

    /// Stops master `name` gracefully and starts it again on the same address.
    fn restart(&mut self, name: &str) {
        drop(self.masters.remove(name));
        let master = spawn_master(&self.pki, &self.etcd, name, &self.listen[name]);
        self.masters.insert(name.to_owned(), master);
    }

    async fn web_status(&self, via: &str, oid: &str) -> Option<i32> {
        let mut web = WebClusterServiceClient::new(self.admin(via).await);
        let c = web
            .get_web_cluster(pb::GetWebClusterRequest {
                webcluster_oid: oid.to_owned(),
            })
            .await
            .ok()?
            .into_inner()
            .webcluster?;
        Some(c.status)
    }

    async fn admin(&self, master: &str) -> Channel {
        channel(&self.pki, "admin", self.masters[master].addr).await
    }

    /// The control plane as master `asked` describes it.
    async fn describe(&self, asked: &str) -> Option<pb::GetControlPlaneResponse> {
        describe_at(&self.pki, self.masters[asked].addr).await
    }

    /// Waits until master `asked` names a leader other than `not` that it lists as a LEADER
    /// member; returns (leader, epoch).
    async fn leader(&self, asked: &str, not: Option<&str>, within: Duration) -> (String, u64) {
        eventually_async("a leader", within, || async {
            let cp = self.describe(asked).await?;
            let leads = cp
                .members
                .iter()
                .any(|m| m.name == cp.leader && m.role == MasterRole::Leader as i32);
            (leads && Some(cp.leader.as_str()) != not && !cp.leader.is_empty())
                .then_some((cp.leader, cp.epoch))
        })
        .await
    }

    async fn online(&self, master: &str) -> usize {
        let mut nodes = pb::node_service_client::NodeServiceClient::new(self.admin(master).await);
        nodes
            .list_nodes(pb::ListNodesRequest {
                return_names: true,
                filter_by_status: pb::NodeStatus::Online as i32,
            })
            .await
            .map_or(0, |r| r.into_inner().items.len())
    }

    async fn agent(&self, node: &str) -> NodeControllerServiceClient<Channel> {
        NodeControllerServiceClient::new(channel(&self.pki, "admin", self.agents[node].addr).await)
    }

    /// The node running worker `id`.
    async fn node_of(&self, id: &str) -> String {
        for n in NODES {
            let list = self
                .agent(n)
                .await
                .list_workers(apb::ListWorkersRequest::default())
                .await
                .unwrap()
                .into_inner();
            if list.workers.iter().any(|w| w.id == id) {
                return n.to_owned();
            }
        }
        panic!("no node runs {id}")
    }

    /// (worker id, pid) of every started worker of every node.
    async fn workers(&self) -> Vec<(String, u32)> {
        let mut all = Vec::new();
        for n in NODES {
            let list = self
                .agent(n)
                .await
                .list_workers(apb::ListWorkersRequest::default())
                .await
                .unwrap()
                .into_inner();
            all.extend(
                list.workers
                    .into_iter()
                    .filter(|w| w.status == apb::WorkerStatus::Started as i32)
                    .map(|w| (w.id, w.pid)),
            );
        }
        all.sort();
        all
    }

    /// Creates and starts a web cluster on both nodes (one worker each); waits for RUNNING
    /// through master `via`.
    async fn run_web(&self, via: &str, name: &str) -> String {
        let mut web = WebClusterServiceClient::new(self.admin(via).await);
        let oid = common::create_web_cluster(&mut web, name, common::free_port()).await;
        for n in NODES {
            common::add_web_node(&mut web, &oid, n, 1, false).await;
        }
        web.start_web_cluster(pb::StartWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap();
        self.wait_running(via, &oid).await;
        oid
    }

    async fn wait_running(&self, via: &str, oid: &str) {
        let web = WebClusterServiceClient::new(self.admin(via).await);
        eventually_async("the web cluster RUNNING", Duration::from_secs(20), || {
            let mut web = web.clone();
            async move {
                let c = web
                    .get_web_cluster(pb::GetWebClusterRequest {
                        webcluster_oid: oid.to_owned(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .webcluster?;
                (c.status == ClusterStatus::Running as i32).then_some(())
            }
        })
        .await;
    }

    fn follower_of(&self, leader: &str) -> String {
        MASTERS.iter().find(|m| **m != leader).unwrap().to_string()
    }
}

/// The control plane as the master at `addr` describes it.
async fn describe_at(pki: &Pki, addr: std::net::SocketAddr) -> Option<pb::GetControlPlaneResponse> {
    let mut cp = ControlPlaneServiceClient::new(channel(pki, "admin", addr).await);
    Some(
        cp.get_control_plane(pb::GetControlPlaneRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

fn spawn_master(pki: &Pki, etcd: &Etcd, name: &str, listen: &str) -> Proc {
    let mut cmd = Command::new(common::master_bin());
    cmd.args(["serve", "--listen", listen, "--name", name])
        .args(["--store", "etcd", "--etcd-endpoints", &etcd.endpoints()])
        .arg("--pki-dir")
        .arg(&pki.path);
    Proc::spawn(cmd)
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn a_killed_leader_is_replaced_in_seconds_and_nothing_moves() {
    let mut cp = ControlPlane::new().await;
    let (leader, epoch) = cp.leader("m1", None, Duration::from_secs(15)).await;
    let described = cp.describe("m2").await.unwrap();
    assert_eq!(described.members.len(), 3, "{described:?}");
    assert_eq!(
        described.leader, leader,
        "every master names the same leader"
    );
    // Agents given a dead address and three masters heartbeat to the leader.
    eventually_async("both nodes online", Duration::from_secs(15), || async {
        (cp.online(&leader).await == 2).then_some(())
    })
    .await;
    let follower = cp.follower_of(&leader);
    assert_eq!(
        cp.online(&follower).await,
        2,
        "a follower answers with the leader's view"
    );
    cp.run_web(&follower, "before").await;
    let before = cp.workers().await;
    assert_eq!(before.len(), 2, "{before:?}");

    // 64 writers create clusters through the followers while the leader dies.
    let followers: Vec<std::net::SocketAddr> = cp
        .masters
        .iter()
        .filter(|(n, _)| **n != leader)
        .map(|(_, m)| m.addr)
        .collect();
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let (pki, addr) = (cp.pki.path.clone(), followers[i % 2]);
            tokio::spawn(async move { write_clusters(pki, addr, i).await })
        })
        .collect();
    let mut dead = cp.masters.remove(&leader).unwrap();
    dead.kill9();
    let killed = Instant::now();
    // A worker stopped right after the leader died is started again by the new leader.
    let (stopped_id, stopped_pid) = before[0].clone();
    let node_of_stopped = cp.node_of(&stopped_id).await;
    cp.agent(&node_of_stopped)
        .await
        .stop_worker(apb::StopWorkerRequest {
            worker_id: stopped_id.clone(),
            kill: false,
        })
        .await
        .unwrap();
    let (next, next_epoch) = cp
        .leader(&follower, Some(&leader), Duration::from_secs(10))
        .await;
    println!(
        "{next} leads {:?} after kill -9 of {leader}",
        killed.elapsed()
    );
    assert!(
        next_epoch > epoch,
        "the epoch grows: {epoch} then {next_epoch}"
    );
    let restarted = eventually_async(
        "the stopped worker started again",
        Duration::from_secs(10),
        || async {
            cp.workers()
                .await
                .into_iter()
                .find(|(id, pid)| *id == stopped_id && *pid != stopped_pid)
        },
    )
    .await;
    // Every write acknowledged to a writer is there.
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    let mut web = WebClusterServiceClient::new(cp.admin(&next).await);
    for oid in &acknowledged {
        web.get_web_cluster(pb::GetWebClusterRequest {
            webcluster_oid: oid.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("acknowledged cluster {oid} lost: {e:?}"));
    }
    println!(
        "{} clusters created by 64 writers across the failover",
        acknowledged.len()
    );
    assert!(acknowledged.len() >= 64, "the writers wrote");
    // The new leader's monitors run: a cluster started now becomes RUNNING.
    cp.run_web(&next, "after").await;
    assert_eq!(cp.online(&next).await, 2, "no node went offline");
    let after: Vec<(String, u32)> = cp.workers().await;
    for w in before.iter().filter(|w| w.0 != stopped_id) {
        assert!(
            after.contains(w),
            "worker {w:?} kept running untouched: {after:?}"
        );
    }
    assert!(after.contains(&restarted), "{after:?}");
    assert_eq!(after.len(), 4, "no worker runs twice: {after:?}");
}

/// Creates web clusters through the master at `addr` for two seconds; returns the oids whose
/// creation was acknowledged (errors are allowed: UNAVAILABLE while etcd is busy, say).
async fn write_clusters(
    pki: std::path::PathBuf,
    addr: std::net::SocketAddr,
    writer: usize,
) -> Vec<String> {
    let identity = switchyard::pki::Identity::load(&pki, "admin").unwrap();
    let Ok(ch) = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(identity.client_tls("localhost"))
        .unwrap()
        .connect()
        .await
    else {
        return Vec::new();
    };
    let mut web = WebClusterServiceClient::new(ch);
    let mut oids = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        let created = web
            .create_web_cluster(pb::CreateWebClusterRequest {
                webcluster: Some(pb::WebCluster {
                    name: format!("w{writer}_{i}"),
                    tcp_port: 8080,
                    tcp_interface: Some("127.0.0.1".into()),
                    ..Default::default()
                }),
            })
            .await;
        match created {
            Ok(r) => oids.extend(r.into_inner().webcluster.map(|c| c.oid)),
            Err(e) if e.code() != tonic::Code::Unavailable => panic!("create: {e:?}"),
            Err(_) => {}
        }
    }
    oids
}

#[tokio::test]
async fn a_stopped_leader_wakes_up_fenced_and_steps_down() {
    let cp = ControlPlane::new().await;
    let (leader, old_epoch) = cp.leader("m1", None, Duration::from_secs(15)).await;
    eventually_async("both nodes online", Duration::from_secs(15), || async {
        (cp.online(&leader).await == 2).then_some(())
    })
    .await;
    let follower = cp.follower_of(&leader);
    cp.run_web(&follower, "before").await;
    let before = cp.workers().await;

    let mut events = pb::event_service_client::EventServiceClient::new(cp.admin(&follower).await)
        .watch(pb::WatchRequest {
            types: vec![pb::EventType::OnLeaderChanged as i32],
            oids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let pid = cp.masters[&leader].pid();
    signal(pid, "-STOP");
    let (next, epoch) = cp
        .leader(&follower, Some(&leader), Duration::from_secs(10))
        .await;
    // Every master's event stream tells of the new leader.
    let changed = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("on_leader_changed within 10 s")
        .unwrap()
        .and_then(|r| r.event)
        .expect("an event");
    match changed.object {
        Some(pb::event::Object::Master(m)) => assert_eq!(m.name, next),
        other => panic!("on_leader_changed carries the leader: {other:?}"),
    }
    assert!(epoch > old_epoch);
    cp.run_web(&next, "meanwhile").await;

    // What the old leader would send now is refused by the agents, which saw the new epoch.
    let mut agent = cp.agent("node1").await;
    let mut stale = tonic::Request::new(apb::StopWorkerRequest {
        worker_id: before[0].0.clone(),
        kill: false,
    });
    stale.metadata_mut().insert(
        switchyard::fencing::EPOCH_METADATA,
        old_epoch.to_string().parse().unwrap(),
    );
    let refused = agent.stop_worker(stale).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(
        switchyard::error::reason_of(&refused).as_deref(),
        Some("STALE_LEADER"),
        "{refused:?}"
    );

    signal(pid, "-CONT");
    eventually_async(
        "the old leader to step down",
        Duration::from_secs(10),
        || async {
            let cp_view = cp.describe(&leader).await?;
            (cp_view.leader == next).then_some(())
        },
    )
    .await;
    let logs = cp.masters[&leader].logs();
    assert!(
        logs.contains("no longer the leader"),
        "the old leader logged its step-down"
    );
    let after = cp.workers().await;
    for w in &before {
        assert!(
            after.contains(w),
            "worker {w:?} untouched by the old leader: {after:?}"
        );
    }
    assert_eq!(after.len(), 4, "{after:?}");
}

#[tokio::test]
async fn masters_restarted_one_after_another_leave_every_cluster_running() {
    let mut cp = ControlPlane::new().await;
    let (first, _) = cp.leader("m1", None, Duration::from_secs(15)).await;
    eventually_async("both nodes online", Duration::from_secs(15), || async {
        (cp.online(&first).await == 2).then_some(())
    })
    .await;
    let oid = cp.run_web("m1", "steady").await;
    let before = cp.workers().await;
    let mut leaders = vec![first];
    for m in MASTERS {
        let was_leader = leaders.last().is_some_and(|l| l == m);
        cp.restart(m);
        let other = cp.follower_of(m);
        let (leader, _) = cp
            .leader(&other, was_leader.then_some(m), Duration::from_secs(10))
            .await;
        leaders.push(leader.clone());
        // Every master, the restarted one too, sees the cluster RUNNING and both nodes online.
        for asked in MASTERS {
            eventually_async("RUNNING everywhere", Duration::from_secs(10), || async {
                let running =
                    cp.web_status(asked, &oid).await == Some(ClusterStatus::Running as i32);
                (running && cp.online(asked).await == 2).then_some(())
            })
            .await;
        }
    }
    println!("leaders: {leaders:?}");
    assert_eq!(cp.workers().await, before, "no worker restarted or moved");
}

#[tokio::test]
async fn a_leader_cut_off_from_etcd_stops_leading_within_its_lease() {
    let net = common::netns::Net::new();
    let etcd_ip = net.host_addr(3);
    let etcd = Etcd::start_also_on(&etcd_ip);
    let pki = Pki::new(&[]);
    for m in MASTERS {
        pki.issue("master", m);
    }
    // m1 runs in the namespace and reaches etcd through the veth; m2 on loopback.
    let listen = format!("{}:{}", net.ns_ip, common::stable_port());
    let mut cmd = Command::new(common::system_tool("ip"));
    cmd.args(["netns", "exec", &net.ns])
        .arg(common::master_bin())
        .args(["serve", "--listen", &listen, "--name", "m1"])
        .args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoint_on(&etcd_ip),
        ])
        .arg("--pki-dir")
        .arg(&pki.path);
    let m1 = Proc::spawn(cmd);
    let leader_per = async |addr| describe_at(&pki, addr).await.map(|cp| cp.leader);
    eventually_async("m1 to lead", Duration::from_secs(15), || async {
        (leader_per(m1.addr).await? == "m1").then_some(())
    })
    .await;
    let m2 = spawn_master(
        &pki,
        &etcd,
        "m2",
        &format!("127.0.0.1:{}", common::stable_port()),
    );
    eventually_async("m2 to follow m1", Duration::from_secs(15), || async {
        (leader_per(m2.addr).await? == "m1").then_some(())
    })
    .await;

    net.blackhole(&etcd_ip);
    let cut = Instant::now();
    eventually_async("m1 to stop leading", Duration::from_secs(10), || async {
        (leader_per(m1.addr).await? != "m1").then_some(())
    })
    .await;
    let stepped_down = cut.elapsed();
    eventually_async("m2 to lead", Duration::from_secs(10), || async {
        (leader_per(m2.addr).await? == "m2").then_some(())
    })
    .await;
    println!(
        "m1 stepped down {stepped_down:?} after losing etcd; m2 leads after {:?}",
        cut.elapsed()
    );
    // Within its 2 s lease (sure of it until 0.9 x TTL after its last keep-alive), plus polling.
    assert!(
        stepped_down < Duration::from_millis(2500),
        "{stepped_down:?}"
    );
    assert!(m1.logs().contains("no longer the leader"));
}
