//! The manhole: an SSH debug console inside a process (the agent itself or a worker).
//!
//! It authenticates exactly the configured users (argon2 password hashes and/or OpenSSH
//! authorized keys; the reference ignored its `users`), and offers a shell of diagnostic commands
//! ([`console`]), interactively or as SSH exec requests (`ssh -p PORT user@host stats`).
//! The host key is generated per process unless one is configured.

pub mod console;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Server as _, Session};
use russh::{Channel, ChannelId};
use switchyard::pb::agent::v1::{Manhole, ManholeConfig, ManholeStatus};
use tokio_util::sync::CancellationToken;

use console::Outcome;

use crate::error::{Error, Result};

/// A configured account.
#[derive(Debug, Clone)]
struct User {
    password_hash: Option<String>,
    keys: Vec<PublicKey>,
}

/// A running manhole.
pub struct RunningManhole {
    /// What GetManhole returns.
    pub info: Manhole,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningManhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningManhole")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl RunningManhole {
    /// Stops accepting connections, ends open sessions and closes the port.
    pub async fn stop(self) -> Manhole {
        self.stop.cancel();
        // The accept loop owns the listener: once it returns, the port is closed.
        let _ = self.task.await;
        let mut info = self.info;
        info.status = ManholeStatus::Stopping as i32;
        info
    }
}

/// Validates `config` and starts the SSH server. `started` is the host process's start instant
/// (for `uptime`), `who` the principal starting it. A missing setting is INVALID_ARGUMENT, one
/// that is set but unusable INVALID_CONFIGURATION (the reference's
/// `crossbar.error.invalid_configuration`; README, "Errors").
pub async fn start(config: ManholeConfig, who: &str, started: Instant) -> Result<RunningManhole> {
    let users = parse_users(&config)?;
    match config.port {
        0 => return Err(Error::invalid("config.port", "required: a port 1..65535")),
        1..=65535 => {}
        port => {
            return Err(Error::invalid_config(
                "config.port",
                format!("{port} is not a port (1..65535)"),
            ));
        }
    }
    let interface = if config.interface.is_empty() {
        "127.0.0.1".to_owned()
    } else {
        config.interface.clone()
    };
    let ip: std::net::IpAddr = interface.parse().map_err(|_| {
        Error::invalid_config(
            "config.interface",
            format!("'{interface}' is not an IP address"),
        )
    })?;
    let host_key = if config.host_key.is_empty() {
        PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
            .map_err(|e| Error::internal("manhole host key", e))?
    } else {
        PrivateKey::from_openssh(config.host_key.as_bytes()).map_err(|e| {
            Error::invalid_config(
                "config.host_key",
                format!("not an OpenSSH private key: {e}"),
            )
        })?
    };
    let fingerprint = host_key
        .public_key()
        .fingerprint(HashAlg::Sha256)
        .to_string();
    let addr = SocketAddr::new(ip, config.port as u16);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::CannotListen(format!("cannot listen on {addr}: {e}")))?;
    let ssh_config = Arc::new(russh::server::Config {
        keys: vec![host_key],
        auth_rejection_time: std::time::Duration::from_millis(300),
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        inactivity_timeout: Some(std::time::Duration::from_secs(3600)),
        nodelay: true,
        ..Default::default()
    });
    let mut server = Server {
        users: Arc::new(users),
        started,
    };
    let stop = CancellationToken::new();
    let accepting = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let (socket, peer) = tokio::select! {
                _ = accepting.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        tracing::warn!(%error, "manhole accept failed");
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let handler = server.new_client(Some(peer));
            let config = ssh_config.clone();
            let stop = accepting.clone();
            tokio::spawn(async move {
                let session = match russh::server::run_stream(config, socket, handler).await {
                    Ok(session) => session,
                    Err(error) => {
                        tracing::info!(%error, %peer, "manhole handshake failed");
                        return;
                    }
                };
                let handle = session.handle();
                tokio::select! {
                    _ = session => {}
                    _ = stop.cancelled() => {
                        let _ = handle
                            .disconnect(russh::Disconnect::ByApplication, "manhole stopped".into(), "en".into())
                            .await;
                    }
                }
            });
        }
    });
    let mut names: Vec<String> = config.users.iter().map(|u| u.user.clone()).collect();
    names.sort();
    let now = SystemTime::now();
    tracing::info!(%addr, users = ?names, "manhole started");
    Ok(RunningManhole {
        info: Manhole {
            status: ManholeStatus::Started as i32,
            port: u32::from(addr.port()),
            interface,
            created: Some(now.into()),
            started: Some(now.into()),
            who: who.to_owned(),
            users: names,
            host_key_fingerprint: fingerprint,
        },
        stop,
        task,
    })
}

fn parse_users(config: &ManholeConfig) -> Result<HashMap<String, User>> {
    if config.users.is_empty() {
        return Err(Error::invalid(
            "config.users",
            "at least one user is required",
        ));
    }
    let mut users = HashMap::new();
    for (i, u) in config.users.iter().enumerate() {
        let field = |f: &str| format!("config.users[{i}].{f}");
        if u.user.is_empty() {
            return Err(Error::invalid(field("user"), "must not be empty"));
        }
        let password_hash = match (u.password_hash.is_empty(), u.password.is_empty()) {
            (false, _) => {
                PasswordHash::new(&u.password_hash).map_err(|e| {
                    Error::invalid_config(field("password_hash"), format!("not a PHC string: {e}"))
                })?;
                Some(u.password_hash.clone())
            }
            (true, false) => Some(hash_password(&u.password)),
            (true, true) => None,
        };
        let keys = u
            .authorized_keys
            .iter()
            .enumerate()
            .map(|(k, line)| {
                PublicKey::from_openssh(line.trim()).map_err(|e| {
                    Error::invalid_config(
                        format!("config.users[{i}].authorized_keys[{k}]"),
                        format!("not an OpenSSH public key: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if password_hash.is_none() && keys.is_empty() {
            return Err(Error::invalid(
                field("password_hash"),
                "a user needs a password, a password hash or authorized keys",
            ));
        }
        if users
            .insert(
                u.user.clone(),
                User {
                    password_hash,
                    keys,
                },
            )
            .is_some()
        {
            return Err(Error::invalid(
                field("user"),
                format!("duplicate user '{}'", u.user),
            ));
        }
    }
    Ok(users)
}

/// An argon2id PHC hash of `password` with a random salt.
pub fn hash_password(password: &str) -> String {
    let hash: Result<PasswordHash, _> =
        argon2::Argon2::default().hash_password(password.as_bytes());
    hash.map(|h| h.to_string()).unwrap_or_default()
}

#[derive(Clone)]
struct Server {
    users: Arc<HashMap<String, User>>,
    started: Instant,
}

impl russh::server::Server for Server {
    type Handler = Session_;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Session_ {
        tracing::info!(?peer, "manhole connection");
        Session_ {
            users: self.users.clone(),
            started: self.started,
            lines: HashMap::new(),
        }
    }
}

/// One SSH connection.
struct Session_ {
    users: Arc<HashMap<String, User>>,
    started: Instant,
    /// Per interactive channel: the partial input line and whether a pty echoes.
    lines: HashMap<ChannelId, (Vec<u8>, bool)>,
}

const PROMPT: &str = "manhole> ";

impl Session_ {
    fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

impl russh::server::Handler for Session_ {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let ok = self
            .users
            .get(user)
            .and_then(|u| u.password_hash.as_deref())
            .and_then(|h| PasswordHash::new(h).ok())
            .is_some_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            });
        tracing::info!(user, ok, "manhole password authentication");
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.key_allowed(user, offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let ok = self.key_allowed(user, key.public_key);
        tracing::info!(user, ok, "manhole public key authentication");
        Ok(if ok { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.lines.entry(channel).or_default().1 = true;
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.lines.entry(channel).or_default();
        session.channel_success(channel)?;
        let banner = format!(
            "Switchyard manhole, pid {}. Type help.\r\n{PROMPT}",
            std::process::id()
        );
        session.data(channel, banner.into_bytes())?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let line = String::from_utf8_lossy(data).into_owned();
        let (text, status) = match console::run(&line, self.uptime()) {
            Outcome::Output(t) => (t, 0),
            Outcome::Error(t) => (t, 1),
            Outcome::Exit => (String::new(), 0),
        };
        session.data(channel, text.into_bytes())?;
        session.exit_status_request(channel, status)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let uptime = self.uptime();
        let (buffer, pty) = self.lines.entry(channel).or_default();
        let pty = *pty;
        let mut out = Vec::new();
        let mut exit = false;
        for &b in data {
            match b {
                b'\r' | b'\n' => {
                    if pty {
                        out.extend_from_slice(b"\r\n");
                    }
                    if b == b'\n' && buffer.is_empty() && !pty {
                        continue;
                    }
                    let line = String::from_utf8_lossy(buffer).into_owned();
                    buffer.clear();
                    match console::run(&line, uptime) {
                        Outcome::Output(t) | Outcome::Error(t) => {
                            out.extend_from_slice(t.replace('\n', "\r\n").as_bytes());
                            out.extend_from_slice(PROMPT.as_bytes());
                        }
                        Outcome::Exit => {
                            exit = true;
                            break;
                        }
                    }
                }
                // Ctrl-C / Ctrl-D end the session.
                3 | 4 => {
                    exit = true;
                    break;
                }
                // Backspace / DEL.
                8 | 127 => {
                    if buffer.pop().is_some() && pty {
                        out.extend_from_slice(b"\x08 \x08");
                    }
                }
                b => {
                    buffer.push(b);
                    if pty {
                        out.push(b);
                    }
                }
            }
        }
        if !out.is_empty() {
            session.data(channel, out)?;
        }
        if exit {
            session.data(channel, b"bye\r\n".to_vec())?;
            session.exit_status_request(channel, 0)?;
            session.eof(channel)?;
            session.close(channel)?;
        }
        Ok(())
    }
}

impl Session_ {
    fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.keys.iter().any(|k| k.key_data() == key.key_data()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::pb::agent::v1::ManholeUser;

    fn user(name: &str, password: &str) -> ManholeUser {
        ManholeUser {
            user: name.into(),
            password: password.into(),
            ..Default::default()
        }
    }

    #[test]
    fn users_are_validated_with_field_names() {
        let no_users = ManholeConfig {
            port: 1,
            ..Default::default()
        };
        assert!(
            matches!(parse_users(&no_users), Err(Error::InvalidArgument { field, .. }) if field == "config.users")
        );
        let no_secret = ManholeConfig {
            users: vec![user("a", "")],
            ..Default::default()
        };
        assert!(
            matches!(parse_users(&no_secret), Err(Error::InvalidArgument { field, .. }) if field.starts_with("config.users[0]"))
        );
        let bad_key = ManholeConfig {
            users: vec![ManholeUser {
                user: "a".into(),
                authorized_keys: vec!["ssh-ed25519 garbage".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            matches!(parse_users(&bad_key), Err(Error::InvalidConfiguration { field, .. }) if field == "config.users[0].authorized_keys[0]")
        );
    }

    #[tokio::test]
    async fn unusable_settings_are_configuration_missing_ones_arguments() {
        let config = |f: fn(&mut ManholeConfig)| {
            let mut c = ManholeConfig {
                port: 1,
                users: vec![user("a", "pw")],
                ..Default::default()
            };
            f(&mut c);
            c
        };
        let refused = |e: Error| match e {
            Error::InvalidArgument { field, .. } => (field, "argument"),
            Error::InvalidConfiguration { field, .. } => (field, "configuration"),
            other => panic!("{other}"),
        };
        for (c, expected) in [
            (config(|c| c.port = 70000), ("config.port", "configuration")),
            (
                config(|c| c.interface = "localhost".into()),
                ("config.interface", "configuration"),
            ),
            (
                config(|c| c.host_key = "garbage".into()),
                ("config.host_key", "configuration"),
            ),
            (
                config(|c| c.users[0].password_hash = "nope".into()),
                ("config.users[0].password_hash", "configuration"),
            ),
            (config(|c| c.port = 0), ("config.port", "argument")),
            (config(|c| c.users.clear()), ("config.users", "argument")),
        ] {
            let e = start(c, "test", Instant::now()).await.unwrap_err();
            let (field, kind) = refused(e);
            assert_eq!((field.as_str(), kind), expected);
        }
    }

    #[test]
    fn plain_passwords_are_hashed() {
        let cfg = ManholeConfig {
            users: vec![user("alice", "s3cret")],
            ..Default::default()
        };
        let users = parse_users(&cfg).unwrap();
        let hash = users["alice"].password_hash.clone().unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("s3cret"));
    }
}
