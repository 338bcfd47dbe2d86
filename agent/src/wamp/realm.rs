//! One realm of a router worker: its sessions, the broker (exact-match subscriptions) and the
//! dealer (single registrations), plus the router links that extend both across the worker group.
//!
//! A router link (the reference's rlink) is a WAMP session this worker opens on a peer worker.
//! Over it this worker forwards its clients' publishes and registers its clients' procedures;
//! the peer delivers forwarded publishes to its own subscribers only (a link session's publishes
//! are never forwarded again: the group is a full mesh, so one hop reaches everybody) and routes
//! calls for a linked procedure back over the link, where this worker invokes its local callee.
//! On the accepting side a link is an ordinary session marked `link`; its registrations rank
//! below local ones.
//!
//! All state sits behind one mutex per realm and is never held across an await; every send is a
//! `try_send` to the peer's bounded queue, and a peer whose queue is full is disconnected rather
//! than slowing everybody down.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::{Fields, Frame, Payload, code, new_id, uri, valid_uri};

/// The queue of frames to one peer.
pub type Tx = mpsc::Sender<Arc<Frame>>;

/// A joined session.
#[derive(Debug)]
pub struct Peer {
    /// Frames to the session's connection.
    pub tx: Tx,
    /// Cancelled to disconnect the session (slow consumer, realm stopped).
    pub kick: CancellationToken,
    /// Whether the session is a router link from a peer worker.
    pub link: bool,
}

#[derive(Debug)]
struct Topic {
    id: u64,
    subscribers: HashSet<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Reg {
    id: u64,
    session: u64,
}

#[derive(Debug, Default)]
struct Procedure {
    local: Option<Reg>,
    remote: Vec<Reg>,
}

#[derive(Debug, Clone)]
enum Caller {
    Session { session: u64, request: u64 },
    Link { link: String, invocation: u64 },
}

#[derive(Debug)]
struct Pending {
    callee: u64,
    caller: Caller,
}

/// This worker's outgoing link to a peer, while connected.
#[derive(Debug)]
struct Link {
    tx: Tx,
    next_request: u64,
    /// REGISTER requests in flight: request id → procedure.
    registering: HashMap<u64, String>,
    /// Procedures registered on the peer: procedure → the peer's registration id.
    registered: HashMap<String, u64>,
}

impl Link {
    fn request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn register(&mut self, procedure: &str) {
        let req = self.request();
        self.registering.insert(req, procedure.to_owned());
        let _ = self
            .tx
            .try_send(Frame::new(json!([code::REGISTER, req, {}, procedure])));
    }

    fn unregister(&mut self, procedure: &str) {
        if let Some(reg) = self.registered.remove(procedure) {
            let req = self.request();
            let _ = self
                .tx
                .try_send(Frame::new(json!([code::UNREGISTER, req, reg])));
        }
    }
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<u64, Peer>,
    topics: HashMap<String, Topic>,
    subscriptions: HashMap<u64, String>,
    procedures: HashMap<String, Procedure>,
    registrations: HashMap<u64, String>,
    invocations: HashMap<u64, Pending>,
    links: HashMap<String, Link>,
}

/// A realm.
#[derive(Debug)]
pub struct Realm {
    /// The realm's name.
    pub name: String,
    /// When it was started.
    pub started: SystemTime,
    state: Mutex<State>,
}

fn send(peer: &Peer, frame: Arc<Frame>) {
    if let Err(mpsc::error::TrySendError::Full(_)) = peer.tx.try_send(frame) {
        tracing::warn!("a WAMP session cannot keep up; disconnecting it");
        peer.kick.cancel();
    }
}

fn error(request_type: u64, request: u64, error: &str, message: String) -> Arc<Frame> {
    Frame::new(json!([
        code::ERROR,
        request_type,
        request,
        {},
        error,
        [message]
    ]))
}

fn flag(options: &Map<String, Value>, key: &str) -> Option<bool> {
    options.get(key).and_then(Value::as_bool)
}

fn ids(options: &Map<String, Value>, key: &str) -> Option<HashSet<u64>> {
    options
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
}

impl Realm {
    /// A new, empty realm.
    pub fn new(name: &str) -> Arc<Realm> {
        Arc::new(Realm {
            name: name.to_owned(),
            started: SystemTime::now(),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Client sessions joined (router links excluded).
    pub fn sessions(&self) -> usize {
        self.state().sessions.values().filter(|p| !p.link).count()
    }

    /// Adds a session (after its WELCOME was queued).
    pub fn join(&self, session: u64, peer: Peer) {
        self.state().sessions.insert(session, peer);
    }

    /// Disconnects every session (the realm is stopping).
    pub fn close_all(&self, reason: &str) {
        let state = self.state();
        let goodbye = Frame::new(json!([code::GOODBYE, {}, reason]));
        for peer in state.sessions.values() {
            let _ = peer.tx.try_send(goodbye.clone());
            peer.kick.cancel();
        }
    }

    /// Removes a session with its subscriptions and registrations; calls it was serving fail
    /// with `wamp.error.canceled`.
    pub fn leave(&self, session: u64) {
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(peer) = state.sessions.remove(&session) else {
            return;
        };
        state.topics.retain(|_, t| {
            t.subscribers.remove(&session);
            !t.subscribers.is_empty()
        });
        let live: HashSet<u64> = state.topics.values().map(|t| t.id).collect();
        state.subscriptions.retain(|id, _| live.contains(id));

        let mut gone = Vec::new();
        for (name, p) in state.procedures.iter_mut() {
            if p.local.is_some_and(|r| r.session == session) {
                gone.push(p.local.take().map(|r| r.id));
                for link in state.links.values_mut() {
                    link.unregister(name);
                }
            }
            p.remote.retain(|r| {
                let keep = r.session != session;
                if !keep {
                    gone.push(Some(r.id));
                }
                keep
            });
        }
        state
            .procedures
            .retain(|_, p| p.local.is_some() || !p.remote.is_empty());
        for id in gone.into_iter().flatten() {
            state.registrations.remove(&id);
        }

        let mut orphaned = Vec::new();
        state.invocations.retain(|_, p| {
            if p.callee == session {
                orphaned.push(p.caller.clone());
                false
            } else {
                !matches!(p.caller, Caller::Session { session: s, .. } if s == session)
            }
        });
        for caller in orphaned {
            reply_error(
                state,
                &caller,
                uri::CANCELED,
                "the callee left".to_owned(),
                &Payload::default(),
            );
        }
        drop(peer);
    }

    /// Handles one message from a joined session; an error is a protocol violation.
    pub fn handle(&self, session: u64, msg: &[Value]) -> Result<(), String> {
        let f = Fields(msg);
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(peer) = state.sessions.get(&session) else {
            return Ok(());
        };
        let link = peer.link;
        match f.code() {
            code::PUBLISH => publish(state, session, link, &f),
            code::SUBSCRIBE => subscribe(state, session, &f),
            code::UNSUBSCRIBE => unsubscribe(state, session, &f),
            code::REGISTER => register(state, session, link, &f),
            code::UNREGISTER => unregister(state, session, &f),
            code::CALL => call(state, session, &f),
            code::YIELD => yield_(state, session, &f),
            code::ERROR => invocation_error(state, session, &f),
            // Call cancellation is an advanced-profile feature; a canceled call still completes.
            code::CANCEL => Ok(()),
            other => Err(format!("unexpected message type {other} in a session")),
        }
    }

    /// A link of this worker connected: announce every local procedure to the peer.
    pub fn link_up(&self, id: &str, tx: Tx) {
        let mut state = self.state();
        let mut link = Link {
            tx,
            next_request: 0,
            registering: HashMap::new(),
            registered: HashMap::new(),
        };
        for (name, p) in &state.procedures {
            if p.local.is_some() {
                link.register(name);
            }
        }
        state.links.insert(id.to_owned(), link);
    }

    /// A link of this worker disconnected: calls it carried are forgotten (the peer failed them).
    pub fn link_down(&self, id: &str) {
        let mut state = self.state();
        state.links.remove(id);
        state
            .invocations
            .retain(|_, p| !matches!(&p.caller, Caller::Link { link, .. } if link == id));
    }

    /// Handles one message the peer sent over this worker's link `id`.
    pub fn link_message(&self, id: &str, msg: &[Value]) -> Result<(), String> {
        let f = Fields(msg);
        let mut guard = self.state();
        let state = &mut *guard;
        match f.code() {
            code::REGISTERED => {
                let (req, reg) = (f.id(1, "REGISTERED.Request")?, f.id(2, "Registration")?);
                let Some(link) = state.links.get_mut(id) else {
                    return Ok(());
                };
                if let Some(name) = link.registering.remove(&req) {
                    if state
                        .procedures
                        .get(&name)
                        .is_some_and(|p| p.local.is_some())
                    {
                        link.registered.insert(name, reg);
                    } else {
                        link.registered.insert(name.clone(), reg);
                        link.unregister(&name);
                    }
                }
            }
            code::ERROR => {
                if f.id(1, "ERROR.Type")? == code::REGISTER
                    && let Some(link) = state.links.get_mut(id)
                {
                    let req = f.id(2, "ERROR.Request")?;
                    if let Some(name) = link.registering.remove(&req) {
                        tracing::warn!(link = id, procedure = %name, error = ?f.0.get(4), "link registration refused");
                    }
                }
            }
            code::INVOCATION => {
                let (inv, reg) = (f.id(1, "INVOCATION.Request")?, f.id(2, "Registration")?);
                let payload = f.payload(4)?;
                let Some(link) = state.links.get(id) else {
                    return Ok(());
                };
                let name = link
                    .registered
                    .iter()
                    .find(|(_, r)| **r == reg)
                    .map(|(n, _)| n.clone());
                let local = name
                    .as_ref()
                    .and_then(|n| state.procedures.get(n))
                    .and_then(|p| p.local);
                match local {
                    Some(callee) => invoke(
                        state,
                        callee,
                        Caller::Link {
                            link: id.to_owned(),
                            invocation: inv,
                        },
                        Map::new(),
                        &payload,
                    ),
                    None => {
                        let _ = link.tx.try_send(error(
                            code::INVOCATION,
                            inv,
                            uri::NO_SUCH_PROCEDURE,
                            "the procedure is no longer registered on this router".to_owned(),
                        ));
                    }
                }
            }
            code::UNREGISTERED | code::PUBLISHED | code::EVENT => {}
            other => return Err(format!("unexpected message type {other} on a router link")),
        }
        Ok(())
    }
}

fn publish(state: &mut State, session: u64, link: bool, f: &Fields) -> Result<(), String> {
    let req = f.id(1, "PUBLISH.Request")?;
    let options = f.dict(2, "PUBLISH.Options")?;
    let topic = f.str(3, "PUBLISH.Topic")?;
    let payload = f.payload(4)?;
    let acknowledge = flag(&options, "acknowledge").unwrap_or(false);
    let reply = |state: &State, frame| {
        if let Some(p) = state.sessions.get(&session) {
            send(p, frame);
        }
    };
    if !valid_uri(topic) {
        if acknowledge {
            reply(
                state,
                error(
                    code::PUBLISH,
                    req,
                    uri::INVALID_URI,
                    format!("invalid topic URI '{topic}'"),
                ),
            );
        }
        return Ok(());
    }
    let publication = new_id();
    if let Some(t) = state.topics.get(topic) {
        let exclude_me = flag(&options, "exclude_me").unwrap_or(true);
        let exclude = ids(&options, "exclude");
        let eligible = ids(&options, "eligible");
        let event = Frame::new(payload.append_to(vec![
            json!(code::EVENT),
            json!(t.id),
            json!(publication),
            json!({}),
        ]));
        for s in &t.subscribers {
            if (*s == session && exclude_me)
                || exclude.as_ref().is_some_and(|x| x.contains(s))
                || eligible.as_ref().is_some_and(|x| !x.contains(s))
            {
                continue;
            }
            if let Some(p) = state.sessions.get(s) {
                send(p, event.clone());
            }
        }
    }
    if !link {
        for l in state.links.values_mut() {
            let req = l.request();
            let _ = l.tx.try_send(Frame::new(payload.append_to(vec![
                json!(code::PUBLISH),
                json!(req),
                json!({}),
                json!(topic),
            ])));
        }
    }
    if acknowledge {
        reply(
            state,
            Frame::new(json!([code::PUBLISHED, req, publication])),
        );
    }
    Ok(())
}

fn subscribe(state: &mut State, session: u64, f: &Fields) -> Result<(), String> {
    let req = f.id(1, "SUBSCRIBE.Request")?;
    let options = f.dict(2, "SUBSCRIBE.Options")?;
    let topic = f.str(3, "SUBSCRIBE.Topic")?;
    let frame = match options.get("match").and_then(Value::as_str) {
        Some(m) if m != "exact" => error(
            code::SUBSCRIBE,
            req,
            "wamp.error.invalid_argument",
            format!("'{m}' matching is not supported; subscriptions match topics exactly"),
        ),
        _ if !valid_uri(topic) => error(
            code::SUBSCRIBE,
            req,
            uri::INVALID_URI,
            format!("invalid topic URI '{topic}'"),
        ),
        _ => {
            let t = state
                .topics
                .entry(topic.to_owned())
                .or_insert_with(|| Topic {
                    id: new_id(),
                    subscribers: HashSet::new(),
                });
            t.subscribers.insert(session);
            let id = t.id;
            state.subscriptions.insert(id, topic.to_owned());
            Frame::new(json!([code::SUBSCRIBED, req, id]))
        }
    };
    if let Some(p) = state.sessions.get(&session) {
        send(p, frame);
    }
    Ok(())
}

fn unsubscribe(state: &mut State, session: u64, f: &Fields) -> Result<(), String> {
    let req = f.id(1, "UNSUBSCRIBE.Request")?;
    let sub = f.id(2, "UNSUBSCRIBE.Subscription")?;
    let mut removed = false;
    if let Some(topic) = state.subscriptions.get(&sub).cloned()
        && let Some(t) = state.topics.get_mut(&topic)
    {
        removed = t.subscribers.remove(&session);
        if t.subscribers.is_empty() {
            state.topics.remove(&topic);
            state.subscriptions.remove(&sub);
        }
    }
    let frame = if removed {
        Frame::new(json!([code::UNSUBSCRIBED, req]))
    } else {
        error(
            code::UNSUBSCRIBE,
            req,
            uri::NO_SUCH_SUBSCRIPTION,
            format!("no subscription {sub} of this session"),
        )
    };
    if let Some(p) = state.sessions.get(&session) {
        send(p, frame);
    }
    Ok(())
}

fn register(state: &mut State, session: u64, link: bool, f: &Fields) -> Result<(), String> {
    let req = f.id(1, "REGISTER.Request")?;
    let name = f.str(3, "REGISTER.Procedure")?;
    let frame = if !valid_uri(name) {
        error(
            code::REGISTER,
            req,
            uri::INVALID_URI,
            format!("invalid procedure URI '{name}'"),
        )
    } else {
        let p = state.procedures.entry(name.to_owned()).or_default();
        let reg = Reg {
            id: new_id(),
            session,
        };
        if link {
            p.remote.push(reg);
            state.registrations.insert(reg.id, name.to_owned());
            Frame::new(json!([code::REGISTERED, req, reg.id]))
        } else if p.local.is_some() {
            error(
                code::REGISTER,
                req,
                uri::PROCEDURE_ALREADY_EXISTS,
                format!("procedure '{name}' is already registered"),
            )
        } else {
            p.local = Some(reg);
            state.registrations.insert(reg.id, name.to_owned());
            for l in state.links.values_mut() {
                l.register(name);
            }
            Frame::new(json!([code::REGISTERED, req, reg.id]))
        }
    };
    if let Some(p) = state.sessions.get(&session) {
        send(p, frame);
    }
    Ok(())
}

fn unregister(state: &mut State, session: u64, f: &Fields) -> Result<(), String> {
    let req = f.id(1, "UNREGISTER.Request")?;
    let reg = f.id(2, "UNREGISTER.Registration")?;
    let mut removed = false;
    if let Some(name) = state.registrations.get(&reg).cloned()
        && let Some(p) = state.procedures.get_mut(&name)
    {
        if p.local.is_some_and(|r| r.id == reg && r.session == session) {
            p.local = None;
            removed = true;
            for l in state.links.values_mut() {
                l.unregister(&name);
            }
        }
        let before = p.remote.len();
        p.remote.retain(|r| !(r.id == reg && r.session == session));
        removed |= p.remote.len() != before;
        if removed {
            state.registrations.remove(&reg);
        }
        if p.local.is_none() && p.remote.is_empty() {
            state.procedures.remove(&name);
        }
    }
    let frame = if removed {
        Frame::new(json!([code::UNREGISTERED, req]))
    } else {
        error(
            code::UNREGISTER,
            req,
            uri::NO_SUCH_REGISTRATION,
            format!("no registration {reg} of this session"),
        )
    };
    if let Some(p) = state.sessions.get(&session) {
        send(p, frame);
    }
    Ok(())
}

fn invoke(
    state: &mut State,
    callee: Reg,
    caller: Caller,
    details: Map<String, Value>,
    payload: &Payload,
) {
    let inv = new_id();
    state.invocations.insert(
        inv,
        Pending {
            callee: callee.session,
            caller,
        },
    );
    let frame = Frame::new(payload.append_to(vec![
        json!(code::INVOCATION),
        json!(inv),
        json!(callee.id),
        Value::Object(details),
    ]));
    if let Some(p) = state.sessions.get(&callee.session) {
        send(p, frame);
    }
}

fn call(state: &mut State, session: u64, f: &Fields) -> Result<(), String> {
    let req = f.id(1, "CALL.Request")?;
    let options = f.dict(2, "CALL.Options")?;
    let name = f.str(3, "CALL.Procedure")?;
    let payload = f.payload(4)?;
    let callee = state
        .procedures
        .get(name)
        .and_then(|p| p.local.or_else(|| p.remote.first().copied()));
    match callee {
        Some(callee) => {
            let mut details = Map::new();
            if flag(&options, "receive_progress") == Some(true) {
                details.insert("receive_progress".to_owned(), json!(true));
            }
            invoke(
                state,
                callee,
                Caller::Session {
                    session,
                    request: req,
                },
                details,
                &payload,
            );
        }
        None => {
            let frame = if valid_uri(name) {
                error(
                    code::CALL,
                    req,
                    uri::NO_SUCH_PROCEDURE,
                    format!("no callee registered for procedure '{name}'"),
                )
            } else {
                error(
                    code::CALL,
                    req,
                    uri::INVALID_URI,
                    format!("invalid procedure URI '{name}'"),
                )
            };
            if let Some(p) = state.sessions.get(&session) {
                send(p, frame);
            }
        }
    }
    Ok(())
}

fn yield_(state: &mut State, session: u64, f: &Fields) -> Result<(), String> {
    let inv = f.id(1, "YIELD.Request")?;
    let options = f.dict(2, "YIELD.Options")?;
    let payload = f.payload(3)?;
    let progress = flag(&options, "progress") == Some(true);
    let Some(pending) = state.invocations.get(&inv) else {
        return Ok(());
    };
    if pending.callee != session {
        return Ok(());
    }
    let caller = pending.caller.clone();
    if !progress {
        state.invocations.remove(&inv);
    }
    let details = if progress {
        json!({"progress": true})
    } else {
        json!({})
    };
    match caller {
        Caller::Session { session, request } => {
            if let Some(p) = state.sessions.get(&session) {
                send(
                    p,
                    Frame::new(payload.append_to(vec![
                        json!(code::RESULT),
                        json!(request),
                        details,
                    ])),
                );
            }
        }
        Caller::Link { link, invocation } => {
            if let Some(l) = state.links.get(&link) {
                let _ = l.tx.try_send(Frame::new(payload.append_to(vec![
                    json!(code::YIELD),
                    json!(invocation),
                    details,
                ])));
            }
        }
    }
    Ok(())
}

fn reply_error(
    state: &State,
    caller: &Caller,
    error_uri: &str,
    message: String,
    payload: &Payload,
) {
    let payload = if payload.args.is_none() && payload.kwargs.is_none() && !message.is_empty() {
        Payload {
            args: Some(vec![json!(message)]),
            kwargs: None,
        }
    } else {
        payload.clone()
    };
    match caller {
        Caller::Session { session, request } => {
            if let Some(p) = state.sessions.get(session) {
                send(
                    p,
                    Frame::new(payload.append_to(vec![
                        json!(code::ERROR),
                        json!(code::CALL),
                        json!(request),
                        json!({}),
                        json!(error_uri),
                    ])),
                );
            }
        }
        Caller::Link { link, invocation } => {
            if let Some(l) = state.links.get(link) {
                let _ = l.tx.try_send(Frame::new(payload.append_to(vec![
                    json!(code::ERROR),
                    json!(code::INVOCATION),
                    json!(invocation),
                    json!({}),
                    json!(error_uri),
                ])));
            }
        }
    }
}

fn invocation_error(state: &mut State, session: u64, f: &Fields) -> Result<(), String> {
    if f.id(1, "ERROR.Type")? != code::INVOCATION {
        return Ok(());
    }
    let inv = f.id(2, "ERROR.Request")?;
    let error_uri = f.str(4, "ERROR.Error")?.to_owned();
    let payload = f.payload(5)?;
    match state.invocations.get(&inv) {
        Some(p) if p.callee == session => {
            let caller = p.caller.clone();
            state.invocations.remove(&inv);
            reply_error(state, &caller, &error_uri, String::new(), &payload);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(realm: &Realm, session: u64, link: bool) -> mpsc::Receiver<Arc<Frame>> {
        let (tx, rx) = mpsc::channel(64);
        realm.join(
            session,
            Peer {
                tx,
                kick: CancellationToken::new(),
                link,
            },
        );
        rx
    }

    fn next(rx: &mut mpsc::Receiver<Arc<Frame>>) -> Value {
        rx.try_recv().expect("a frame").value().clone()
    }

    fn handle(realm: &Realm, session: u64, msg: Value) {
        let Value::Array(items) = msg else { panic!() };
        realm.handle(session, &items).unwrap();
    }

    fn from_link(realm: &Realm, link: &str, msg: Value) {
        let Value::Array(items) = msg else { panic!() };
        realm.link_message(link, &items).unwrap();
    }

    #[test]
    fn publishes_reach_subscribers_but_not_the_publisher() {
        let realm = Realm::new("realm1");
        let (mut a, mut b) = (peer(&realm, 1, false), peer(&realm, 2, false));
        handle(&realm, 1, json!([32, 1, {}, "t"]));
        handle(&realm, 2, json!([32, 1, {}, "t"]));
        let sub = next(&mut a)[2].clone();
        assert_eq!(next(&mut b)[0], 33);
        handle(
            &realm,
            2,
            json!([16, 7, {"acknowledge": true}, "t", [1], {"k": 2}]),
        );
        let event = next(&mut a);
        assert_eq!((event[0].clone(), event[1].clone()), (json!(36), sub));
        assert_eq!(
            (event[4].clone(), event[5].clone()),
            (json!([1]), json!({"k": 2}))
        );
        assert_eq!(next(&mut b)[0], 17, "only the acknowledgement");
        assert!(b.try_recv().is_err());
    }

    #[test]
    fn bad_uris_and_unknown_ids_are_wamp_errors() {
        let realm = Realm::new("realm1");
        let mut a = peer(&realm, 1, false);
        handle(&realm, 1, json!([16, 1, {"acknowledge": true}, "bad uri"]));
        assert_eq!(
            next(&mut a),
            json!([
                8,
                16,
                1,
                {},
                "wamp.error.invalid_uri",
                ["invalid topic URI 'bad uri'"]
            ])
        );
        handle(&realm, 1, json!([34, 2, 99]));
        assert_eq!(next(&mut a)[4], "wamp.error.no_such_subscription");
        handle(&realm, 1, json!([66, 3, 99]));
        assert_eq!(next(&mut a)[4], "wamp.error.no_such_registration");
        handle(&realm, 1, json!([48, 4, {}, "nobody.home"]));
        assert_eq!(next(&mut a)[4], "wamp.error.no_such_procedure");
        let Value::Array(bad) = json!([16, "x"]) else {
            panic!()
        };
        assert!(
            realm.handle(1, &bad).is_err(),
            "a mistyped field is a protocol violation"
        );
    }

    #[test]
    fn a_callee_that_leaves_cancels_its_calls() {
        let realm = Realm::new("realm1");
        let (mut callee, mut caller) = (peer(&realm, 1, false), peer(&realm, 2, false));
        handle(&realm, 1, json!([64, 1, {}, "p"]));
        next(&mut callee);
        handle(&realm, 2, json!([48, 9, {}, "p", [1]]));
        assert_eq!(next(&mut callee)[0], 68);
        realm.leave(1);
        let err = next(&mut caller);
        assert_eq!(
            (err[0].clone(), err[2].clone(), err[4].clone()),
            (json!(8), json!(9), json!("wamp.error.canceled"))
        );
        handle(&realm, 2, json!([48, 10, {}, "p"]));
        assert_eq!(next(&mut caller)[4], "wamp.error.no_such_procedure");
    }

    #[test]
    fn a_link_carries_local_publishes_registrations_and_calls() {
        let realm = Realm::new("realm1");
        let mut local = peer(&realm, 1, false);
        handle(&realm, 1, json!([64, 1, {}, "p"]));
        let local_reg = next(&mut local)[2].clone();
        let (tx, mut link) = mpsc::channel(64);
        realm.link_up("L", tx);
        // Local procedures are registered on the peer as soon as the link is up.
        let reg = next(&mut link);
        assert_eq!((reg[0].clone(), reg[3].clone()), (json!(64), json!("p")));
        from_link(&realm, "L", json!([65, reg[1], 555]));
        // A local publish is forwarded once.
        handle(&realm, 1, json!([16, 2, {}, "t", ["x"]]));
        let publish = next(&mut link);
        assert_eq!(
            (publish[0].clone(), publish[3].clone(), publish[4].clone()),
            (json!(16), json!("t"), json!(["x"]))
        );
        // The peer's invocation reaches the local callee, and its yield goes back.
        from_link(&realm, "L", json!([68, 77, 555, {}, [2]]));
        let inv = next(&mut local);
        assert_eq!(
            (inv[0].clone(), inv[2].clone(), inv[4].clone()),
            (json!(68), local_reg, json!([2]))
        );
        handle(&realm, 1, json!([70, inv[1], {}, [4]]));
        assert_eq!(next(&mut link), json!([70, 77, {}, [4]]));
        // Unregistering locally unregisters on the peer.
        handle(&realm, 1, json!([66, 3, inv[2]]));
        next(&mut local);
        assert_eq!(next(&mut link)[2], 555);
    }

    #[test]
    fn what_arrives_over_a_link_is_delivered_locally_only() {
        let realm = Realm::new("realm1");
        let mut sub = peer(&realm, 1, false);
        let mut from_peer = peer(&realm, 2, true);
        let (tx, mut out) = mpsc::channel(64);
        realm.link_up("L", tx);
        handle(&realm, 1, json!([32, 1, {}, "t"]));
        next(&mut sub);
        handle(&realm, 2, json!([16, 5, {}, "t", ["y"]]));
        assert_eq!(next(&mut sub)[4], json!(["y"]));
        assert!(out.try_recv().is_err(), "not forwarded again");
        // A procedure registered by a link ranks below a local one.
        handle(&realm, 2, json!([64, 2, {}, "p"]));
        next(&mut from_peer);
        handle(&realm, 1, json!([64, 3, {}, "p"]));
        assert_eq!(
            next(&mut sub)[0],
            65,
            "a local registration beside a linked one"
        );
        handle(&realm, 2, json!([48, 9, {}, "p"]));
        assert_eq!(next(&mut sub)[0], 68, "the local callee serves");
        assert_eq!(realm.sessions(), 1, "links are not counted as sessions");
    }
}
