//! The agent's runtime directory (0700): its workers' control sockets, records and log FIFOs
//! (`worker/files.rs`), the agent key (`worker/control.rs`), and `agent.lock`, which the serving
//! agent holds locked (flock) and which names its pid. One agent per directory: a second one
//! is refused at start-up, and a new agent on the directory adopts the workers of the last.
//!
//! Also `switchyard-agent stop` ([`stop`]): stops the directory's agent *and its workers* for
//! good (SIGINT, see `docs/operations.md`); with no agent running, it stops the recorded
//! workers itself.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::worker::control::{self, KEY_FILE};
use crate::worker::files;
use crate::worker::pid::ProcessId;
use crate::worker::record::Record;

/// The lock file.
pub const LOCK_FILE: &str = "agent.lock";

/// Why the runtime directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    /// Another agent serves on it.
    #[error(
        "runtime directory {path} is in use by agent pid {pid}; stop it first or use another --runtime-dir"
    )]
    InUse {
        /// The directory.
        path: PathBuf,
        /// The other agent's pid (0: unknown).
        pid: u32,
    },
    /// It cannot be created, locked or written.
    #[error("cannot use runtime directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The runtime directory, locked by this agent while it lives.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
    _lock: File,
}

fn read_pid(file: &mut File) -> u32 {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    text.trim().parse().unwrap_or(0)
}

impl RuntimeDir {
    /// Creates (0700) and locks `path`, recording this process's pid.
    pub fn open(path: &Path) -> Result<Self, RuntimeDirError> {
        let io = |source| RuntimeDirError::Io {
            path: path.to_owned(),
            source,
        };
        control::ensure_runtime_dir(path).map_err(io)?;
        let mut lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path.join(LOCK_FILE))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(RuntimeDirError::InUse {
                    path: path.to_owned(),
                    pid: read_pid(&mut lock),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(io)?;
        Ok(RuntimeDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the agent's own files and the directory (once its workers are stopped).
    pub fn remove(self) {
        for name in [KEY_FILE, LOCK_FILE] {
            let _ = std::fs::remove_file(self.path.join(name));
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            let left: Vec<String> = std::fs::read_dir(&self.path)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            tracing::warn!(dir = %self.path.display(), error = %e, ?left, "cannot remove the runtime directory");
        }
    }
}

/// The pid of the agent serving on `path`, if one does.
pub fn running_agent(path: &Path) -> Option<u32> {
    let mut file = File::open(path.join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => Some(read_pid(&mut file)),
    }
}

/// Stops the agent on `dir` and its workers for good, waiting up to `timeout`; with no agent
/// there, stops the recorded workers (SIGTERM, SIGKILL after `stop_timeout`). Returns what it
/// did, for the operator.
pub fn stop(dir: &Path, timeout: Duration, stop_timeout: Duration) -> Result<String, String> {
    if let Some(pid) = running_agent(dir) {
        if pid == 0 {
            return Err(format!(
                "{} is locked by an agent of unknown pid",
                dir.display()
            ));
        }
        let agent = ProcessId::of(pid);
        kill(Pid::from_raw(pid as i32), Signal::SIGINT)
            .map_err(|e| format!("cannot signal agent pid {pid}: {e}"))?;
        let deadline = Instant::now() + timeout;
        // Done when the process is gone (it removes the directory just before it exits).
        while agent.is_some_and(|a| a.is_running()) || running_agent(dir).is_some() {
            if Instant::now() > deadline {
                return Err(format!(
                    "agent pid {pid} did not stop within {timeout:?} (it is still stopping its workers)"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(format!("stopped agent pid {pid} and its workers"));
    }
    let records = match Record::read_all(dir) {
        Ok((records, _)) => records,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(format!("no agent and no workers in {}", dir.display()));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let live: Vec<ProcessId> = records
        .iter()
        .filter_map(|r| r.process.filter(ProcessId::is_running))
        .collect();
    for p in &live {
        let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + stop_timeout;
    while live.iter().any(ProcessId::is_running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in live.iter().filter(|p| p.is_running()) {
        let _ = kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL);
    }
    for r in &records {
        files::remove_all(dir, &r.id);
    }
    for name in [KEY_FILE, LOCK_FILE] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
    Ok(format!(
        "no agent was running on {}; stopped {} worker(s)",
        dir.display(),
        live.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_agent_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        let first = RuntimeDir::open(&path).unwrap();
        assert_eq!(running_agent(&path), Some(std::process::id()));
        let second = RuntimeDir::open(&path).unwrap_err();
        assert!(
            matches!(second, RuntimeDirError::InUse { pid, .. } if pid == std::process::id()),
            "{second}"
        );
        drop(first);
        assert_eq!(running_agent(&path), None);
        RuntimeDir::open(&path).unwrap().remove();
        assert!(!path.exists());
    }
}
