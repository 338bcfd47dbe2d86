//! The web services of a web worker, by path: validated and prepared once when added, looked up
//! by longest path prefix (at segment boundaries) per request. The table is an immutable
//! snapshot swapped on change, so adding or removing a service never disturbs requests in flight
//! on other paths.
//!
//! A missing key is INVALID_ARGUMENT; a key that is set but unusable (a directory that is not
//! absolute or does not exist, a URL that does not parse, a port out of range) is
//! INVALID_CONFIGURATION (README, "Errors"). Either names the field.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use switchyard::pb::agent::v1::{self as pb, web_service::Service};

use crate::error::{Error, Result};

/// What serves a path.
#[derive(Debug)]
pub enum Handler {
    /// Files under a canonical root directory.
    Static(super::static_files::Site),
    /// A pre-rendered JSON body.
    Json {
        /// The body.
        body: Bytes,
        /// The service's options.
        options: pb::JsonOptions,
    },
    /// A redirect target.
    Redirect(String),
    /// An HTTP backend.
    Proxy(super::proxy::Backend),
    /// Node information.
    NodeInfo,
    /// WebSocket backends, used round-robin.
    WebSocket {
        /// The backends.
        backends: Vec<pb::WebSocketBackend>,
        /// The next backend to use.
        next: AtomicUsize,
    },
}

/// One mounted service.
#[derive(Debug)]
pub struct Route {
    /// The service as added (returned by ListWebServices).
    pub spec: pb::WebService,
    /// Its handler.
    pub handler: Handler,
    /// What it answered (docs/operations.md, "Metrics").
    pub traffic: Arc<super::traffic::Traffic>,
}

/// Normalises and checks a service path: "/" or "/a/b".
pub fn check_path(path: &str) -> Result<String> {
    let p = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    if p == "/" {
        return Ok(p);
    }
    let ok = p[1..].split('/').all(|s| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b))
    });
    if ok {
        Ok(p)
    } else {
        Err(Error::invalid(
            "service.path",
            format!("'{path}' is not a valid path"),
        ))
    }
}

/// Validates a service and prepares its handler.
pub fn prepare(mut spec: pb::WebService) -> Result<Route> {
    spec.path = check_path(&spec.path)?;
    let handler = match spec.service.clone() {
        None => {
            return Err(Error::invalid(
                "service.service",
                "one of static, json, redirect, reverseproxy, nodeinfo, websocket_reverseproxy is required",
            ));
        }
        Some(Service::Static(s)) => static_site(s)?,
        Some(Service::Json(j)) => {
            let value = j
                .value
                .as_ref()
                .ok_or_else(|| Error::invalid("service.json.value", "required"))?;
            let options = j.options.unwrap_or_default();
            let json = to_json(value);
            let body = if options.prettify {
                serde_json::to_vec_pretty(&json)
            } else {
                serde_json::to_vec(&json)
            }
            .map_err(|e| Error::invalid_config("service.json.value", e.to_string()))?;
            Handler::Json {
                body: Bytes::from(body),
                options,
            }
        }
        Some(Service::Redirect(r)) => {
            if r.url.trim().is_empty() {
                return Err(Error::invalid("service.redirect.url", "required"));
            }
            let uri: http::Uri = r
                .url
                .parse()
                .map_err(|_| Error::invalid_config("service.redirect.url", "not a URL"))?;
            if uri.scheme().is_none() || uri.host().is_none() {
                return Err(Error::invalid_config(
                    "service.redirect.url",
                    "must be an absolute URL",
                ));
            }
            Handler::Redirect(r.url)
        }
        Some(Service::Reverseproxy(mut p)) => {
            if p.host.is_empty() {
                return Err(Error::invalid("service.reverseproxy.host", "required"));
            }
            if p.port == 0 {
                p.port = 80;
            }
            if p.port > 65535 {
                return Err(Error::invalid_config(
                    "service.reverseproxy.port",
                    format!("{} is not a port (1..65535)", p.port),
                ));
            }
            Handler::Proxy(super::proxy::Backend::new(p))
        }
        Some(Service::Nodeinfo(_)) => Handler::NodeInfo,
        Some(Service::WebsocketReverseproxy(w)) => websocket_backends(w)?,
    };
    Ok(Route {
        spec,
        handler,
        traffic: Arc::default(),
    })
}

fn static_site(s: pb::StaticService) -> Result<Handler> {
    const FIELD: &str = "service.static.directory";
    if s.directory.is_empty() {
        return Err(Error::invalid(FIELD, "required"));
    }
    if !std::path::Path::new(&s.directory).is_absolute() {
        return Err(Error::invalid_config(
            FIELD,
            format!("'{}' is not an absolute path", s.directory),
        ));
    }
    let root = std::fs::canonicalize(&s.directory)
        .map_err(|e| Error::invalid_config(FIELD, format!("{}: {e}", s.directory)))?;
    if !root.is_dir() {
        return Err(Error::invalid_config(
            FIELD,
            format!("{} is not a directory", s.directory),
        ));
    }
    Ok(Handler::Static(super::static_files::Site::new(
        root,
        s.options.unwrap_or_default(),
    )))
}

fn websocket_backends(w: pb::WebSocketReverseProxyService) -> Result<Handler> {
    let mut backends = w.backends;
    if let Some(b) = w.backend {
        backends.push(b);
    }
    if backends.is_empty() {
        return Err(Error::invalid(
            "service.websocket_reverseproxy.backends",
            "at least one backend is required",
        ));
    }
    for (i, b) in backends.iter().enumerate() {
        let field = format!("service.websocket_reverseproxy.backends[{i}]");
        if b.host.is_empty() || b.port == 0 {
            return Err(Error::invalid(field, "host and port 1..65535 are required"));
        }
        if b.port > 65535 {
            return Err(Error::invalid_config(
                field,
                format!("{} is not a port (1..65535)", b.port),
            ));
        }
    }
    Ok(Handler::WebSocket {
        backends,
        next: AtomicUsize::new(0),
    })
}

/// protobuf `Value` → JSON.
pub fn to_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(to_json).collect())
        }
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// The services of a worker.
#[derive(Debug, Default)]
pub struct Routes {
    table: RwLock<Arc<BTreeMap<String, Arc<Route>>>>,
}

impl Routes {
    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Route>>> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Mounts a route; `false` if its path is taken.
    pub fn add(&self, route: Route) -> bool {
        let mut guard = self.table.write().unwrap_or_else(|p| p.into_inner());
        if guard.contains_key(&route.spec.path) {
            return false;
        }
        let mut next = (**guard).clone();
        next.insert(route.spec.path.clone(), Arc::new(route));
        *guard = Arc::new(next);
        true
    }

    /// Unmounts the route on `path`.
    pub fn remove(&self, path: &str) -> Option<Arc<Route>> {
        let mut guard = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        let removed = next.remove(path)?;
        *guard = Arc::new(next);
        Some(removed)
    }

    /// Every route, by path.
    pub fn list(&self) -> Vec<Arc<Route>> {
        self.snapshot().values().cloned().collect()
    }

    /// The route with the longest path prefix of `path` (at a segment boundary), and where the
    /// rest of the path starts (`&path[at..]` starts with "/", or is empty).
    pub fn lookup(&self, path: &str) -> Option<(Arc<Route>, usize)> {
        let table = self.snapshot();
        let mut prefix = path.trim_end_matches('/');
        loop {
            let key = if prefix.is_empty() { "/" } else { prefix };
            if let Some(route) = table.get(key) {
                let at = if key == "/" { 0 } else { key.len() };
                return Some((route.clone(), at));
            }
            if prefix.is_empty() {
                return None;
            }
            prefix = &prefix[..prefix.rfind('/').unwrap_or(0)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodeinfo(path: &str) -> Route {
        prepare(pb::WebService {
            path: path.into(),
            service: Some(Service::Nodeinfo(Default::default())),
        })
        .unwrap()
    }

    #[test]
    fn longest_prefix_at_segment_boundaries() {
        let routes = Routes::default();
        assert!(routes.add(nodeinfo("/")));
        assert!(routes.add(nodeinfo("/a")));
        assert!(routes.add(nodeinfo("/a/b")));
        assert!(!routes.add(nodeinfo("/a")), "a taken path");
        let find = |p: &str| {
            routes
                .lookup(p)
                .map(|(r, at)| (r.spec.path.clone(), p[at..].to_owned()))
        };
        assert_eq!(find("/a/b/c"), Some(("/a/b".into(), "/c".into())));
        assert_eq!(find("/a/bc"), Some(("/a".into(), "/bc".into())));
        assert_eq!(find("/a"), Some(("/a".into(), "".into())));
        assert_eq!(find("/ab"), Some(("/".into(), "/ab".into())));
        routes.remove("/");
        assert_eq!(find("/ab"), None);
    }

    #[test]
    fn json_values_render_as_json() {
        let v = prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(
                prost_types::ListValue {
                    values: vec![
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(1.0)),
                        },
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(2.5)),
                        },
                    ],
                },
            )),
        };
        assert_eq!(to_json(&v).to_string(), "[1,2.5]");
    }

    fn service(s: Service) -> pb::WebService {
        pb::WebService {
            path: "/x".into(),
            service: Some(s),
        }
    }

    /// The field and the kind of error `spec` is refused with.
    fn refused(spec: pb::WebService) -> (String, &'static str) {
        match prepare(spec) {
            Err(Error::InvalidArgument { field, .. }) => (field, "argument"),
            Err(Error::InvalidConfiguration { field, .. }) => (field, "configuration"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn bad_services_name_the_field() {
        let dir = |d: &str| {
            service(Service::Static(pb::StaticService {
                directory: d.into(),
                options: None,
            }))
        };
        let redirect = |u: &str| service(Service::Redirect(pb::RedirectService { url: u.into() }));
        let proxy = |port| {
            service(Service::Reverseproxy(pb::ReverseProxyService {
                host: "h".into(),
                port,
                ..Default::default()
            }))
        };
        let backend = |host: &str, port| {
            service(Service::WebsocketReverseproxy(
                pb::WebSocketReverseProxyService {
                    backend: Some(pb::WebSocketBackend {
                        host: host.into(),
                        port,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
        };
        let static_dir = "service.static.directory";
        let a_file = std::env::current_exe().unwrap().display().to_string();
        for (spec, field, kind) in [
            // Set but unusable: INVALID_CONFIGURATION.
            (dir("/no/such/dir"), static_dir, "configuration"),
            (dir("relative/www"), static_dir, "configuration"),
            (dir(&a_file), static_dir, "configuration"),
            (
                redirect("not a url"),
                "service.redirect.url",
                "configuration",
            ),
            (
                redirect("/relative"),
                "service.redirect.url",
                "configuration",
            ),
            (proxy(70000), "service.reverseproxy.port", "configuration"),
            (
                backend("h", 70000),
                "service.websocket_reverseproxy.backends[0]",
                "configuration",
            ),
            // Missing or malformed: INVALID_ARGUMENT.
            (dir(""), static_dir, "argument"),
            (redirect(""), "service.redirect.url", "argument"),
            (
                backend("", 80),
                "service.websocket_reverseproxy.backends[0]",
                "argument",
            ),
            (
                pb::WebService {
                    path: "/a/../b".into(),
                    service: Some(Service::Nodeinfo(Default::default())),
                },
                "service.path",
                "argument",
            ),
        ] {
            let what = format!("{spec:?}");
            assert_eq!(refused(spec), (field.to_owned(), kind), "{what}");
        }
        assert!(prepare(dir("/")).is_ok());
        assert!(prepare(proxy(0)).is_ok(), "port 0 is the default, 80");
    }
}
