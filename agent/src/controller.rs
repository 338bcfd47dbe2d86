//! The agent process itself: the `"controller"` of NativeProcessService.

use std::time::SystemTime;

/// The process name that addresses the agent itself.
pub const CONTROLLER: &str = "controller";

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
