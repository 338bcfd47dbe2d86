//! Open descriptors, threads, files and sockets of the current process (GetProcessInfo).

use std::collections::HashMap;

use procfs::process::{FDTarget, Process};
use switchyard::pb::agent::v1::{GetProcessInfoResponse, OpenFile, SocketInfo, SocketType};

/// Describes the current process. Socket tables are read from this process's network namespace.
pub fn current() -> procfs::ProcResult<GetProcessInfoResponse> {
    let process = Process::myself()?;
    let stat = process.stat()?;
    let sockets_by_inode = socket_table();
    let mut files = Vec::new();
    let mut sockets = Vec::new();
    let mut descriptors = 0u32;
    for fd in process.fd()?.flatten() {
        descriptors += 1;
        match fd.target {
            FDTarget::Path(path) => files.push(OpenFile {
                path: path.display().to_string(),
                fd: fd.fd,
            }),
            FDTarget::Socket(inode) => {
                if let Some(info) = sockets_by_inode.get(&inode) {
                    sockets.push(info.clone());
                }
            }
            _ => {}
        }
    }
    sockets.sort_by(|a, b| (a.r#type, &a.local).cmp(&(b.r#type, &b.local)));
    Ok(GetProcessInfoResponse {
        pid: process.pid as u32,
        descriptors,
        threads: stat.num_threads.max(0) as u32,
        files,
        sockets,
    })
}

fn socket_table() -> HashMap<u64, SocketInfo> {
    let mut map = HashMap::new();
    let tcp = [
        (procfs::net::tcp(), SocketType::Tcp4),
        (procfs::net::tcp6(), SocketType::Tcp6),
    ];
    for (entries, kind) in tcp {
        for e in entries.into_iter().flatten() {
            let connected = !e.remote_address.ip().is_unspecified();
            map.insert(
                e.inode,
                SocketInfo {
                    r#type: kind as i32,
                    local: e.local_address.to_string(),
                    remote: if connected {
                        e.remote_address.to_string()
                    } else {
                        String::new()
                    },
                    status: tcp_state(&e.state).to_owned(),
                },
            );
        }
    }
    let udp = [
        (procfs::net::udp(), SocketType::Udp4),
        (procfs::net::udp6(), SocketType::Udp6),
    ];
    for (entries, kind) in udp {
        for e in entries.into_iter().flatten() {
            map.insert(
                e.inode,
                SocketInfo {
                    r#type: kind as i32,
                    local: e.local_address.to_string(),
                    remote: String::new(),
                    status: "NONE".into(),
                },
            );
        }
    }
    for e in procfs::net::unix().into_iter().flatten() {
        map.insert(
            e.inode,
            SocketInfo {
                r#type: SocketType::Unix as i32,
                local: e.path.map(|p| p.display().to_string()).unwrap_or_default(),
                remote: String::new(),
                status: format!("{:?}", e.state).to_uppercase(),
            },
        );
    }
    map
}

fn tcp_state(state: &procfs::net::TcpState) -> &'static str {
    use procfs::net::TcpState::*;
    match state {
        Established => "ESTABLISHED",
        SynSent => "SYN_SENT",
        SynRecv => "SYN_RECV",
        FinWait1 => "FIN_WAIT1",
        FinWait2 => "FIN_WAIT2",
        TimeWait => "TIME_WAIT",
        Close => "CLOSE",
        CloseWait => "CLOSE_WAIT",
        LastAck => "LAST_ACK",
        Listen => "LISTEN",
        Closing => "CLOSING",
        NewSynRecv => "NEW_SYN_RECV",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_listening_socket_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let info = current().unwrap();
        assert_eq!(info.pid, std::process::id());
        assert!(info.descriptors >= 3);
        assert!(
            info.sockets.iter().any(|s| s.local == addr
                && s.status == "LISTEN"
                && s.r#type == SocketType::Tcp4 as i32),
            "{:?}",
            info.sockets
        );
    }
}
