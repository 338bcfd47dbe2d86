//! Leadership: which master runs the monitors (docs/operations.md, "Several masters").
//!
//! On etcd every master holds a lease of `--leader-lease` and keeps it alive; the first to create
//! `ctl/leader` on its lease leads, with the revision of that write as its **epoch**. The others
//! follow: they watch the key and try again as soon as it is gone (the leader resigned, or its
//! lease expired). A leader's [`Term`] ends as soon as it cannot be sure of its lease: its last
//! successful keep-alive was sent more than 0.9 × TTL ago (this master's monotonic clock, which
//! also runs while the process is stopped), the lease expired, or the key changed.
//!
//! A term fences what the leader does: its monitors' store writes carry the condition that
//! `ctl/leader` still holds this term's record ([`Term::fence`]), and its agent calls carry the
//! epoch, which agents refuse once they have seen a newer one (`switchyard::fencing`).
//!
//! On sled (one master) the master leads from start to stop, epoch 0, without any fence.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use switchyard::pb::master::v1::{ControlPlaneMember, EventType, MasterRole, event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::etcd::EtcdStore;
use crate::store::{StoreError, Txn, codec, keys};

/// The default `--leader-lease`: etcd's smallest lease (2 s with its default election timeout),
/// so that a dead leader is replaced within about two seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);

/// One term of leadership of this master.
#[derive(Debug, Clone)]
pub struct Term {
    /// The epoch: the store revision that made this master the leader (0 on sled).
    pub epoch: u64,
    /// The `ctl/leader` record of this term (`None` on sled: nothing to compare).
    record: Option<Vec<u8>>,
    /// Until when (ms after [`Leadership`]'s base instant) the lease is surely held.
    held_until: Arc<AtomicU64>,
    base: Instant,
    /// Cancelled when the term ends.
    pub stop: CancellationToken,
}

impl Term {
    /// Whether this master surely still leads in this term.
    pub fn holds(&self) -> bool {
        !self.stop.is_cancelled()
            && (self.base.elapsed().as_millis() as u64) < self.held_until.load(Ordering::SeqCst)
    }

    /// `txn` conditioned on this term still leading; an error when it surely does not.
    pub fn fence(&self, txn: Txn) -> Result<Txn, StoreError> {
        if !self.holds() {
            return Err(not_leading());
        }
        Ok(match &self.record {
            Some(record) => txn.equals(keys::LEADER.to_vec(), record.clone()),
            None => txn,
        })
    }
}

fn lease_unconfirmed() -> StoreError {
    StoreError::Unavailable(
        "no lease keep-alive confirmed within the lease: etcd is unreachable".into(),
    )
}

fn not_leading() -> StoreError {
    StoreError::Unavailable("this master is no longer the leader".into())
}

/// What this master knows of the leadership.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The leader, if there is one.
    pub leader: Option<ControlPlaneMember>,
    /// The leader's epoch (0: none known).
    pub epoch: u64,
    /// This master's term, while it leads.
    pub term: Option<Term>,
}

/// This master's part in the leadership, shared by the API, the monitors and the agent calls.
#[derive(Debug)]
pub struct Leadership {
    me: ControlPlaneMember,
    view: watch::Sender<View>,
    base: Instant,
    lease: Duration,
    /// Times this master became the leader (for metrics).
    pub terms: AtomicU64,
}

impl Leadership {
    fn new(name: &str, address: &str, lease: Duration) -> Self {
        Leadership {
            me: ControlPlaneMember {
                name: name.to_owned(),
                address: address.to_owned(),
                role: MasterRole::Follower as i32,
                since: Some(SystemTime::now().into()),
                last_seen: None,
            },
            view: watch::Sender::new(View::default()),
            base: Instant::now(),
            lease,
            terms: AtomicU64::new(0),
        }
    }

    /// The only master of its store: leads from now until `stop` (sled).
    pub fn single(name: &str, address: &str, stop: CancellationToken) -> Self {
        let this = Leadership::new(name, address, DEFAULT_LEASE);
        let term = Term {
            epoch: 0,
            record: None,
            held_until: Arc::new(AtomicU64::new(u64::MAX)),
            base: this.base,
            stop,
        };
        let mut me = this.me.clone();
        me.role = MasterRole::Leader as i32;
        this.terms.store(1, Ordering::Relaxed);
        this.view.send_replace(View {
            leader: Some(me),
            epoch: 0,
            term: Some(term),
        });
        this
    }

    /// One of several masters on `etcd`: follows until [`Leadership::run`] wins a term.
    pub fn elected(name: &str, address: &str, lease: Duration) -> Self {
        Leadership::new(name, address, lease)
    }

    /// This master's name.
    pub fn name(&self) -> &str {
        &self.me.name
    }

    /// What this master knows now.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Follows the leadership as it changes.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    /// This master's term, while it surely leads.
    pub fn term(&self) -> Option<Term> {
        self.view.borrow().term.clone().filter(Term::holds)
    }

    /// Whether this master leads now.
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// The members of the control plane: the rows of the masters that are up (on sled: this
    /// one), each with its role.
    pub async fn members(
        &self,
        store: &dyn crate::store::Store,
    ) -> Result<Vec<ControlPlaneMember>, StoreError> {
        let view = self.view();
        let mut members: Vec<ControlPlaneMember> = store
            .scan(keys::MASTERS)
            .await?
            .iter()
            .filter_map(|(k, v)| codec::decode(k, v).ok())
            .collect();
        if members.is_empty() && view.term.is_some() {
            members.push(self.me.clone());
        }
        for m in &mut members {
            let leads = view.leader.as_ref().is_some_and(|l| l.name == m.name);
            m.role = if leads {
                MasterRole::Leader
            } else {
                MasterRole::Follower
            } as i32;
            if leads {
                m.since = view.leader.as_ref().and_then(|l| l.since);
            }
        }
        Ok(members)
    }

    /// Campaigns on `etcd` until `shutdown` (then resigns: revokes the lease, so that another
    /// master leads at once). Publishes `on_leader_changed` through `events` when this master
    /// becomes the leader.
    pub async fn run(
        self: Arc<Self>,
        etcd: Arc<EtcdStore>,
        core: Arc<crate::core::Core>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let outcome = self.session(&etcd, &core.events, &shutdown).await;
            self.end_term();
            match outcome {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "leader election: lost the lease; campaigning again");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn end_term(&self) {
        self.view.send_modify(|v| {
            if let Some(term) = v.term.take() {
                term.stop.cancel();
                v.leader = None; // unknown until the watch or a campaign tells
                tracing::warn!(epoch = term.epoch, "no longer the leader");
            }
        });
    }

    /// One lease: granted, kept alive, campaigned with; revoked when it ends.
    async fn session(
        &self,
        etcd: &EtcdStore,
        events: &crate::events::Events,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let asked = Instant::now();
        let (lease, ttl) = etcd.grant_lease(self.lease).await?;
        let held_until = Arc::new(AtomicU64::new(0));
        self.renewed(&held_until, asked, ttl);
        let outcome = self
            .hold(etcd, events, lease, ttl, &held_until, shutdown)
            .await;
        self.end_term();
        // Resign (or clean up after a lost lease): every key of the lease goes at once.
        let _ = tokio::time::timeout(Duration::from_secs(1), etcd.revoke_lease(lease)).await;
        outcome
    }

    /// Notes a keep-alive sent at `sent` that etcd answered with `ttl`.
    fn renewed(&self, held_until: &AtomicU64, sent: Instant, ttl: Duration) {
        let until = sent.duration_since(self.base) + ttl.mul_f64(0.9);
        held_until.fetch_max(until.as_millis() as u64, Ordering::SeqCst);
    }

    async fn hold(
        &self,
        etcd: &EtcdStore,
        events: &crate::events::Events,
        lease: i64,
        ttl: Duration,
        held_until: &Arc<AtomicU64>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        use crate::store::Store;
        self.put_member(etcd, lease).await?;
        let mut changes = etcd.watch(keys::LEADER, 0);
        let mut ticker = tokio::time::interval((ttl / 3).max(Duration::from_millis(200)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut campaign = true;
        loop {
            if campaign {
                campaign = false;
                self.campaign(etcd, events, lease, held_until, shutdown)
                    .await?;
            }
            let leading = self.view.borrow().term.clone();
            if let Some(term) = &leading
                && !term.holds()
            {
                return Err(not_leading());
            }
            let sure_until = self.base + Duration::from_millis(held_until.load(Ordering::SeqCst));
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                // No keep-alive confirmed in time: stop leading now, not at the next tick.
                _ = tokio::time::sleep_until(sure_until.into()), if leading.is_some() => {
                    return Err(lease_unconfirmed());
                }
                _ = ticker.tick() => {
                    let sent = Instant::now();
                    match tokio::time::timeout(ttl / 3, etcd.keep_alive(lease)).await {
                        Ok(Ok(left)) if !left.is_zero() => {
                            self.renewed(held_until, sent, left);
                            // Only `last_seen` is at stake: a slow write must not end the term.
                            if let Err(error) = self.put_member(etcd, lease).await {
                                tracing::debug!(%error, "cannot refresh this master's member row");
                            }
                        }
                        Ok(Ok(_)) => return Err(StoreError::Unavailable("the lease expired".into())),
                        Ok(Err(error)) => tracing::warn!(%error, "lease keep-alive failed"),
                        Err(_) => tracing::warn!("lease keep-alive: no answer"),
                    }
                    if (self.base.elapsed().as_millis() as u64) >= held_until.load(Ordering::SeqCst) {
                        return Err(lease_unconfirmed());
                    }
                }
                change = changes.next() => match change {
                    Some(Ok(c)) => {
                        let ours = leading.as_ref().and_then(|t| t.record.clone());
                        match c.value {
                            Some(v) if Some(&v) == ours.as_ref() => {}
                            Some(_) if ours.is_some() => {
                                return Err(StoreError::Unavailable("another master leads".into()));
                            }
                            Some(v) => self.follow(&v, c.revision),
                            None if ours.is_some() => {
                                return Err(StoreError::Unavailable("the leader record was deleted".into()));
                            }
                            None => campaign = true,
                        }
                    }
                    // The watch broke (compaction): read the key again.
                    Some(Err(_)) | None => {
                        changes = etcd.watch(keys::LEADER, 0);
                        campaign = leading.is_none();
                    }
                },
            }
        }
    }

    /// Tries to become the leader with `lease`; else learns who leads.
    async fn campaign(
        &self,
        etcd: &EtcdStore,
        events: &crate::events::Events,
        lease: i64,
        held_until: &Arc<AtomicU64>,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let mut me = self.me.clone();
        me.role = MasterRole::Leader as i32;
        me.since = Some(SystemTime::now().into());
        let record = codec::encode(&me);
        match etcd
            .create_leased(keys::LEADER, record.clone(), lease)
            .await?
        {
            Some(epoch) => {
                let term = Term {
                    epoch,
                    record: Some(record),
                    held_until: held_until.clone(),
                    base: self.base,
                    stop: shutdown.child_token(),
                };
                self.terms.fetch_add(1, Ordering::Relaxed);
                tracing::info!(epoch, name = %me.name, "this master is the leader");
                self.view.send_replace(View {
                    leader: Some(me.clone()),
                    epoch,
                    term: Some(term),
                });
                let name = me.name.clone();
                events.publish(
                    EventType::OnLeaderChanged,
                    &name,
                    None,
                    event::Object::Master(me),
                );
            }
            // Gone between the two calls: the watch reports it and we campaign again.
            None => {
                if let Some((value, epoch)) = etcd.get_with_revision(keys::LEADER).await? {
                    self.follow(&value, epoch);
                }
            }
        }
        Ok(())
    }

    fn follow(&self, record: &[u8], epoch: u64) {
        let Ok(leader) = codec::decode::<ControlPlaneMember>(keys::LEADER, record) else {
            return;
        };
        tracing::info!(leader = %leader.name, address = %leader.address, epoch, "following the leader");
        self.view.send_replace(View {
            leader: Some(leader),
            epoch,
            term: None,
        });
    }

    /// Writes this master's member row (with its lease) with `last_seen` now.
    async fn put_member(&self, etcd: &EtcdStore, lease: i64) -> Result<(), StoreError> {
        let mut me = self.me.clone();
        me.last_seen = Some(SystemTime::now().into());
        etcd.put_leased(&keys::master(&me.name), codec::encode(&me), lease)
            .await
    }
}

/// The error of a write of a leader that no longer leads (or lost its fence meanwhile).
pub fn fenced(error: StoreError) -> StoreError {
    match error {
        StoreError::Conflict(key) if key.as_bytes() == keys::LEADER => not_leading(),
        other => other,
    }
}
