//! Leadership epochs on agent calls: the leading master marks each control call with its epoch
//! ([`EPOCH_METADATA`]), and an agent refuses a call whose epoch is older than the newest it has
//! seen ([`EpochGuard`]), so a deposed leader that wakes up with stale beliefs changes nothing
//! (docs/operations.md, "Several masters").

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Reason, status};

/// The request metadata carrying the caller's leadership epoch (decimal).
pub const EPOCH_METADATA: &str = "switchyard-leader-epoch";

/// The newest leadership epoch an agent has seen.
#[derive(Debug, Default)]
pub struct EpochGuard {
    newest: AtomicU64,
}

impl EpochGuard {
    /// Takes note of `epoch` (from the leader's heartbeat answers); older ones change nothing.
    pub fn observe(&self, epoch: u64) {
        self.newest.fetch_max(epoch, Ordering::SeqCst);
    }

    /// The newest epoch seen (0: none).
    pub fn newest(&self) -> u64 {
        self.newest.load(Ordering::SeqCst)
    }

    /// Admits a call carrying `epoch` (raising the newest seen), or refuses it with
    /// FAILED_PRECONDITION (`STALE_LEADER`) when a newer epoch was seen.
    pub fn admit(&self, epoch: u64) -> Result<(), tonic::Status> {
        let newest = self.newest.fetch_max(epoch, Ordering::SeqCst);
        if epoch < newest {
            return Err(status(
                Reason::StaleLeader,
                format!(
                    "this call carries leadership epoch {epoch}, but a newer leader (epoch {newest}) \
                     controls this node: the caller is no longer the leader"
                ),
            ));
        }
        Ok(())
    }

    /// A tonic interceptor admitting calls by their [`EPOCH_METADATA`] (calls without it, from
    /// an operator or the gateway, are not fenced).
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let Some(value) = request.metadata().get(EPOCH_METADATA) else {
            return Ok(());
        };
        let epoch = value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                crate::error::invalid_argument(EPOCH_METADATA, "not a decimal leadership epoch")
            })?;
        self.admit(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_epoch_is_refused_once_a_newer_one_was_seen() {
        let guard = EpochGuard::default();
        assert!(guard.admit(3).is_ok());
        assert!(guard.admit(3).is_ok());
        let refused = guard.admit(2).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused.message().contains("epoch 2"),
            "{}",
            refused.message()
        );
        guard.observe(7);
        assert!(guard.admit(5).is_err());
        assert!(guard.admit(8).is_ok());
        guard.observe(1);
        assert_eq!(guard.newest(), 8);
    }
}
