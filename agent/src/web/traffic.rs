//! What a web worker's services answered, for the agent's `/metrics` (docs/operations.md,
//! "Metrics"): per service, responses by status class, a latency histogram with fixed buckets
//! and body bytes sent; per listener, the connections open now.
//!
//! The hot path is a few relaxed atomic additions on counters owned by the service's route
//! (a listener is one thread, so they are never contended) and one clock read per request. The
//! worker keeps the counters; the agent reads them at scrape time with `GetWebTransport` over
//! the worker's control socket, so nothing is sent anywhere between scrapes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Response;
use hyper::body::{Body as _, Frame, SizeHint};
use switchyard::pb::agent::v1 as pb;

use super::{Body, BodyError};

/// Upper bounds of the latency buckets, in seconds (a `+Inf` bucket follows).
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// [`LATENCY_BOUNDS`] in nanoseconds, for the comparison on the hot path.
const BOUNDS_NS: [u64; 12] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
];

/// The label of requests no service matched.
pub const UNROUTED: &str = "none";

/// The counters of one web service (or of the requests no service matched).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Responses by status class, 1xx at 0 .. 5xx at 4.
    classes: [AtomicU64; 5],
    /// Responses per latency bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; 13],
    latency_ns: AtomicU64,
    bytes: AtomicU64,
}

impl Traffic {
    /// Counts one response with status `status`, answered after `elapsed`.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(12);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Counts `n` body bytes sent.
    pub fn sent(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as `GetWebTransport` reports them.
    pub fn to_pb(&self, path: &str) -> pb::WebServiceTraffic {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        pb::WebServiceTraffic {
            path: path.to_owned(),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .iter()
                .zip(&self.classes)
                .map(|(class, n)| ((*class).to_owned(), load(n)))
                .collect(),
            latency_bounds: LATENCY_BOUNDS.to_vec(),
            latency_counts: self.buckets.iter().map(load).collect(),
            latency_sum: load(&self.latency_ns) as f64 / 1e9,
            bytes_sent: load(&self.bytes),
        }
    }
}

/// Counts the body bytes of `response` on `traffic`: at once when its length is known (every
/// in-memory body and file), else frame by frame as it streams (a proxied chunked body). A
/// response to HEAD sends no body.
pub fn count_body(traffic: &Arc<Traffic>, head: bool, response: Response<Body>) -> Response<Body> {
    if head {
        return response;
    }
    if let Some(n) = response.body().size_hint().exact() {
        traffic.sent(n);
        return response;
    }
    response.map(|body| {
        Body::stream(Counted {
            inner: body,
            traffic: traffic.clone(),
        })
    })
}

/// A streamed body that counts its data frames.
struct Counted {
    inner: Body,
    traffic: Arc<Traffic>,
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<bytes::Bytes>, BodyError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.traffic.sent(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connections of a listener open now.
#[derive(Debug, Default)]
pub struct Connections(AtomicU64);

impl Connections {
    /// Counts a connection open until the guard drops.
    pub fn open(self: &Arc<Self>) -> Open {
        self.0.fetch_add(1, Ordering::Relaxed);
        Open(self.clone())
    }

    /// Connections open now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One open connection of [`Connections`].
#[derive(Debug)]
pub struct Open(Arc<Connections>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_fall_in_their_class_and_bucket() {
        let t = Traffic::default();
        t.record(200, Duration::from_micros(100));
        t.record(404, Duration::from_millis(3));
        t.record(503, Duration::from_secs(9));
        t.record(101, Duration::from_millis(1));
        t.sent(10);
        let p = t.to_pb("/a");
        assert_eq!(p.responses["2xx"], 1);
        assert_eq!(p.responses["4xx"], 1);
        assert_eq!(p.responses["5xx"], 1);
        assert_eq!(p.responses["1xx"], 1);
        assert_eq!(p.responses["3xx"], 0);
        assert_eq!(p.latency_counts.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(p.latency_counts[0], 1, "100 µs <= 0.5 ms");
        assert_eq!(p.latency_counts[1], 1, "1 ms <= 1 ms");
        assert_eq!(p.latency_counts[3], 1, "3 ms <= 5 ms");
        assert_eq!(p.latency_counts[12], 1, "9 s: +Inf");
        assert!((p.latency_sum - 9.0041).abs() < 1e-6);
        assert_eq!(p.bytes_sent, 10);
        for (b, ns) in LATENCY_BOUNDS.iter().zip(BOUNDS_NS) {
            assert_eq!((b * 1e9).round() as u64, ns);
        }
    }

    #[tokio::test]
    async fn body_bytes_count_known_lengths_at_once_and_streams_as_they_go() {
        use http_body_util::BodyExt;
        let t = Arc::new(Traffic::default());
        let _ = count_body(&t, false, Response::new(super::super::full("12345")));
        assert_eq!(t.to_pb("/").bytes_sent, 5);
        let _ = count_body(&t, true, Response::new(super::super::full("12345")));
        assert_eq!(t.to_pb("/").bytes_sent, 5, "HEAD sends no body");

        // A stream of unknown length (a chunked proxied body): counted frame by frame.
        let frames = futures::stream::iter(
            ["abc", "defg"].map(|s| Ok::<_, BodyError>(Frame::data(bytes::Bytes::from(s)))),
        );
        let streamed = Body::stream(http_body_util::StreamBody::new(frames));
        assert_eq!(streamed.size_hint().exact(), None);
        let response = count_body(&t, false, Response::new(streamed));
        assert_eq!(
            t.to_pb("/").bytes_sent,
            5,
            "nothing counted before it is sent"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abcdefg");
        assert_eq!(t.to_pb("/").bytes_sent, 12);
    }

    #[test]
    fn open_connections_count_down_when_they_close() {
        let c = Arc::new(Connections::default());
        let a = c.open();
        let b = c.open();
        assert_eq!(c.get(), 2);
        drop(a);
        assert_eq!(c.get(), 1);
        drop(b);
        assert_eq!(c.get(), 0);
    }
}
