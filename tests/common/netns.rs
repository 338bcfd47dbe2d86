//! A network namespace made by a test, linked to the host by a veth pair (10.251.x.0/24), removed
//! on drop: for partitions without touching any other address.

use std::process::Command;

use super::system_tool;

pub fn ip(args: &[&str]) {
    let out = Command::new(system_tool("ip")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespace and veth pair, removed on drop.
pub struct Net {
    pub ns: String,
    pub host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl Net {
    pub fn new() -> Net {
        let id = std::process::id() % 60000;
        let subnet = 1 + id % 250;
        let net = Net {
            ns: format!("sy{id}"),
            host_if: format!("syh{id}"),
            host_ip: format!("10.251.{subnet}.1"),
            ns_ip: format!("10.251.{subnet}.2"),
        };
        let ns_if = format!("sya{id}");
        let _ = Command::new("ip").args(["netns", "del", &net.ns]).output();
        ip(&["netns", "add", &net.ns]);
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &net.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &net.host_if,
        ]);
        ip(&["link", "set", &net.host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &net.ns,
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.ns_ip),
            "dev",
            &ns_if,
        ]);
        ip(&["netns", "exec", &net.ns, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &net.ns, "ip", "link", "set", "lo", "up"]);
        net
    }

    pub fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

impl Net {
    /// Another address of the host end (`10.251.x.<last>`), reachable from the namespace.
    pub fn host_addr(&self, last: u8) -> String {
        let (subnet, _) = self.host_ip.rsplit_once('.').unwrap();
        let addr = format!("{subnet}.{last}");
        ip(&["addr", "add", &format!("{addr}/32"), "dev", &self.host_if]);
        addr
    }

    /// Makes `addr` unreachable from inside the namespace (and only from there).
    pub fn blackhole(&self, addr: &str) {
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "ip",
            "route",
            "add",
            "blackhole",
            &format!("{addr}/32"),
        ]);
    }
}
