//! What a worker has in the agent's runtime directory, next to the agent's `agent.key` and
//! `agent.lock`: its control socket `ID.sock`, its record `ID.json` (what a new agent needs to
//! adopt it, [`super::record`]), and the FIFOs its stdout and stderr write to, `ID.stdout` and
//! `ID.stderr` (FIFOs, not pipes, so that a new agent can read the output of a worker it adopts).

use std::path::{Path, PathBuf};

use switchyard::pb::agent::v1::LogStream;

/// The record of worker `id`.
pub fn record(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// The FIFO worker `id` writes `stream` to.
pub fn log_fifo(dir: &Path, id: &str, stream: LogStream) -> PathBuf {
    let name = if stream == LogStream::Stderr {
        "stderr"
    } else {
        "stdout"
    };
    dir.join(format!("{id}.{name}"))
}

/// Creates the FIFO `path` (0600), replacing whatever is there.
pub fn make_fifo(path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(std::io::Error::from)
}

/// Removes every file of worker `id` (missing ones are fine).
pub fn remove_all(dir: &Path, id: &str) {
    for path in [
        record(dir, id),
        super::control::socket_path(dir, id),
        log_fifo(dir, id, LogStream::Stdout),
        log_fifo(dir, id, LogStream::Stderr),
    ] {
        let _ = std::fs::remove_file(path);
    }
}
