//! A worker's stdout/stderr: a bounded ring of the newest lines plus a feed for followers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use switchyard::pb::agent::v1::{LogLine, LogStream};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

/// Longest kept line, bytes; longer lines are cut.
const MAX_LINE: usize = 8192;

/// The log of one worker.
#[derive(Debug)]
pub struct LogRing {
    capacity: usize,
    state: Mutex<(u64, VecDeque<LogLine>)>,
    feed: broadcast::Sender<LogLine>,
}

impl LogRing {
    /// A ring keeping the newest `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        LogRing {
            capacity: capacity.max(1),
            state: Mutex::new((0, VecDeque::new())),
            feed: broadcast::channel(256).0,
        }
    }

    /// Appends a line.
    pub fn push(&self, stream: LogStream, mut text: String) {
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        let line = LogLine {
            seq: state.0,
            ts: Some(SystemTime::now().into()),
            stream: stream as i32,
            line: text,
        };
        if state.1.len() == self.capacity {
            state.1.pop_front();
        }
        state.1.push_back(line.clone());
        let _ = self.feed.send(line);
    }

    /// The newest `limit` lines (0: all kept), oldest first.
    pub fn tail(&self, limit: usize) -> Vec<LogLine> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let skip = if limit == 0 {
            0
        } else {
            state.1.len().saturating_sub(limit)
        };
        state.1.iter().skip(skip).cloned().collect()
    }

    /// The newest `limit` lines and a receiver of every later line, without a gap between them.
    pub fn follow(&self, limit: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let _guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.feed.subscribe();
        drop(_guard);
        let lines = self.tail(limit);
        (lines, rx)
    }

    /// Reads `reader` line by line into the ring until EOF.
    pub async fn pump(&self, reader: impl AsyncRead + Unpin, stream: LogStream) {
        let mut lines = BufReader::new(reader).split(b'\n');
        while let Ok(Some(bytes)) = lines.next_segment().await {
            let text = String::from_utf8_lossy(&bytes)
                .trim_end_matches('\r')
                .to_owned();
            self.push(stream, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            ring.push(LogStream::Stdout, format!("line {i}"));
        }
        let lines: Vec<_> = ring.tail(0).into_iter().map(|l| (l.seq, l.line)).collect();
        assert_eq!(
            lines,
            [
                (3, "line 2".into()),
                (4, "line 3".into()),
                (5, "line 4".into())
            ]
        );
        assert_eq!(ring.tail(1)[0].line, "line 4");
    }

    #[tokio::test]
    async fn pumps_lines_and_feeds_followers() {
        let ring = LogRing::new(10);
        let (before, mut rx) = ring.follow(0);
        assert!(before.is_empty());
        ring.pump(&b"a\r\nb\n\xffc"[..], LogStream::Stderr).await;
        let got: Vec<_> = ring.tail(0).into_iter().map(|l| l.line).collect();
        assert_eq!(got, ["a", "b", "\u{fffd}c"]);
        assert_eq!(rx.recv().await.unwrap().line, "a");
    }
}
