//! The web worker's listening socket, built with socket2 so that `tcp_shared` can set
//! SO_REUSEPORT (several workers on one node share the port; the kernel spreads connections).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use switchyard::pb::agent::v1::WebTransport;

use crate::error::{Error, Result};

/// The address a transport listens on: an unset port is INVALID_ARGUMENT; a port, interface
/// or IP version that is set but unusable INVALID_CONFIGURATION.
pub fn address(t: &WebTransport) -> Result<SocketAddr> {
    let port = match t.tcp_port {
        0 => {
            return Err(Error::invalid(
                "transport.tcp_port",
                "required: a port 1..65535",
            ));
        }
        p => u16::try_from(p).map_err(|_| {
            Error::invalid_config(
                "transport.tcp_port",
                format!("{p} is not a port (1..65535)"),
            )
        })?,
    };
    let version = t.tcp_version.unwrap_or(4);
    if version != 4 && version != 6 {
        return Err(Error::invalid_config(
            "transport.tcp_version",
            format!("{version} is not 4 or 6"),
        ));
    }
    let ip = match &t.tcp_interface {
        Some(i) => i.parse::<IpAddr>().map_err(|_| {
            Error::invalid_config(
                "transport.tcp_interface",
                format!("'{i}' is not an IP address"),
            )
        })?,
        None if version == 6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Binds and listens, sharing the port when `tcp_shared`. The socket is non-blocking, for the
/// runtime that will serve it.
pub fn bind(t: &WebTransport) -> Result<std::net::TcpListener> {
    let addr = address(t)?;
    let backlog = t.tcp_backlog.unwrap_or(1024).clamp(1, 65535) as i32;
    let err = |e| Error::CannotListen(format!("cannot listen on {addr}: {e}"));
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
    Ok(socket.into())
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

    #[test]
    fn shared_ports_share_and_others_cannot_listen() {
        let a = bind(&transport(0, true)).unwrap_err();
        assert!(matches!(a, Error::InvalidArgument { field, .. } if field == "transport.tcp_port"));
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = u32::from(probe.local_addr().unwrap().port());
        drop(probe);
        let first = bind(&transport(port, true)).unwrap();
        let second = bind(&transport(port, true)).unwrap();
        assert!(matches!(
            bind(&transport(port, false)),
            Err(Error::CannotListen(..))
        ));
        drop((first, second));
    }

    #[test]
    fn unusable_transport_keys_are_configuration() {
        let field_of = |t: WebTransport| match address(&t) {
            Err(Error::InvalidConfiguration { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(transport(70000, false)), "transport.tcp_port");
        assert_eq!(
            field_of(WebTransport {
                tcp_version: Some(5),
                ..transport(80, false)
            }),
            "transport.tcp_version"
        );
        assert_eq!(
            field_of(WebTransport {
                tcp_interface: Some("localhost".into()),
                ..transport(80, false)
            }),
            "transport.tcp_interface"
        );
    }
}
