//! The web worker's listening socket, built with socket2 so that `tcp_shared` can set
//! SO_REUSEPORT (several workers on one node share the port; the kernel spreads connections).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use switchyard::pb::agent::v1::WebTransport;

/// Why a listener could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Invalid transport fields; names the field.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// The OS refused (port taken without sharing, permission).
    #[error("cannot listen on {0}: {1}")]
    CannotListen(SocketAddr, std::io::Error),
}

/// The address a transport listens on.
pub fn address(t: &WebTransport) -> Result<SocketAddr, ListenError> {
    let port = u16::try_from(t.tcp_port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ListenError::Invalid("transport.tcp_port", "must be 1..65535".into()))?;
    let version = t.tcp_version.unwrap_or(4);
    let ip = match (&t.tcp_interface, version) {
        (Some(i), _) => i.parse::<IpAddr>().map_err(|_| {
            ListenError::Invalid(
                "transport.tcp_interface",
                format!("'{i}' is not an IP address"),
            )
        })?,
        (None, 4) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, 6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, v) => {
            return Err(ListenError::Invalid(
                "transport.tcp_version",
                format!("{v} is not 4 or 6"),
            ));
        }
    };
    Ok(SocketAddr::new(ip, port))
}

/// Binds and listens, sharing the port when `tcp_shared`.
pub fn bind(t: &WebTransport) -> Result<tokio::net::TcpListener, ListenError> {
    let addr = address(t)?;
    let backlog = t.tcp_backlog.unwrap_or(1024).clamp(1, 65535) as i32;
    let err = |e| ListenError::CannotListen(addr, e);
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if t.tcp_shared.unwrap_or(false) {
        socket.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_tcp_nodelay(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(backlog).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    tokio::net::TcpListener::from_std(socket.into()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(port: u32, shared: bool) -> WebTransport {
        WebTransport {
            tcp_port: port,
            tcp_shared: Some(shared),
            tcp_interface: Some("127.0.0.1".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn shared_ports_share_and_others_cannot_listen() {
        let a = bind(&transport(0, true)).unwrap_err();
        assert!(matches!(a, ListenError::Invalid("transport.tcp_port", _)));
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = u32::from(probe.local_addr().unwrap().port());
        drop(probe);
        let first = bind(&transport(port, true)).unwrap();
        let second = bind(&transport(port, true)).unwrap();
        assert!(matches!(
            bind(&transport(port, false)),
            Err(ListenError::CannotListen(..))
        ));
        drop((first, second));
    }
}
