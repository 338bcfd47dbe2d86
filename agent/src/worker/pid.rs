//! Which process a pid is: the pid plus the process's start time (field 22 of
//! `/proc/<pid>/stat`, clock ticks since boot). A pid is reused once its process is gone; the
//! pair is not, so it is what the agent records to find its workers again after a restart and
//! what a worker records of its agent. A zombie counts as gone: it serves nothing any more.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A process, told apart from later processes that reuse its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Its start time, clock ticks after boot.
    pub start_time: u64,
}

/// How often exits are polled where a pidfd is unavailable.
const POLL: Duration = Duration::from_millis(100);

impl ProcessId {
    /// The process running as `pid` now (`None`: no such process, or a zombie).
    pub fn of(pid: u32) -> Option<Self> {
        let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
            .ok()?
            .stat()
            .ok()?;
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            return None;
        }
        Some(ProcessId {
            pid,
            start_time: stat.starttime,
        })
    }

    /// This process.
    pub fn current() -> Option<Self> {
        Self::of(std::process::id())
    }

    /// Whether this very process still runs (same pid, same start time, not a zombie).
    pub fn is_running(&self) -> bool {
        Self::of(self.pid).is_some_and(|now| now == *self)
    }

    /// Resolves once the process has exited (at once if it is gone already). Uses a pidfd,
    /// which works for processes that are not our children; polls `/proc` without one.
    pub async fn exited(self) {
        match crate::sys::pidfd_open(self.pid) {
            // The pidfd names whatever runs as the pid now: check that it is still ours.
            Ok(fd) if self.is_running() => {
                if crate::sys::pidfd_exited(fd).await.is_ok() {
                    return;
                }
            }
            Ok(_) => return,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return,
            Err(_) => {}
        }
        while self.is_running() {
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_process_is_running_and_a_changed_start_time_is_not() {
        let me = ProcessId::current().unwrap();
        assert!(me.is_running());
        let reused = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_running(), "same pid, other start time");
        assert_eq!(ProcessId::of(u32::MAX), None);
    }

    #[tokio::test]
    async fn exit_is_seen_for_a_child_and_at_once_for_a_gone_process() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let id = ProcessId::of(child.id().unwrap()).unwrap();
        let reaper = tokio::spawn(async move { child.wait().await });
        tokio::time::timeout(Duration::from_secs(5), id.exited())
            .await
            .expect("exit seen");
        reaper.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(1), id.exited())
            .await
            .expect("a gone process has exited");
    }
}
