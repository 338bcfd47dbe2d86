//! The agent process itself: the `"controller"` of NativeProcessService.

use std::time::{Instant, SystemTime};

/// The process name that addresses the agent itself.
pub const CONTROLLER: &str = "controller";

/// Facts about the agent process.
#[derive(Debug)]
pub struct Controller {
    /// The node's authid.
    pub authid: String,
    /// The agent's pid.
    pub pid: u32,
    started_at: SystemTime,
    started: Instant,
}

impl Controller {
    /// The controller of the current process, started now.
    pub fn new(authid: String) -> Self {
        Controller {
            authid,
            pid: std::process::id(),
            started_at: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// When the agent started (wall clock).
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Seconds since the agent started (monotonic).
    pub fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// ISO-8601 UTC with milliseconds, as the reference's `utcnow()`/`started()` return it.
pub fn iso8601(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format)
        .unwrap_or_else(|_| String::from("invalid time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_is_utc_with_millis() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_598_395_797_587);
        assert_eq!(iso8601(t), "2020-08-25T22:49:57.587Z");
    }
}
