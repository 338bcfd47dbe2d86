//! Host statistics for GetSystemStats (CPU, memory, load, network), from sysinfo.
//!
//! CPU utilisation is measured between two refreshes, so one `System` lives for the agent's life
//! and each call reports the utilisation since the previous call (or since start).

use std::sync::Mutex;
use std::time::SystemTime;

use switchyard::pb::agent::v1::{GetSystemStatsResponse, NetworkInterfaceStats};
use sysinfo::{Networks, System};

/// The host, refreshed on demand.
#[derive(Debug)]
pub struct Host {
    state: Mutex<(System, Networks)>,
}

impl Host {
    /// Takes the first CPU and network reading.
    pub fn new() -> Result<Self, sysinfo::Error> {
        let mut system = System::new()?;
        system.refresh_cpu_usage();
        system.refresh_memory();
        let networks = Networks::new_with_refreshed_list()?;
        Ok(Host {
            state: Mutex::new((system, networks)),
        })
    }

    /// Refreshes and reports the host's counters.
    pub fn stats(&self) -> GetSystemStatsResponse {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (system, networks) = &mut *guard;
        system.refresh_cpu_usage();
        system.refresh_memory();
        networks.refresh(true);
        let load = System::load_average().unwrap_or_default();
        let mut network: Vec<NetworkInterfaceStats> = networks
            .iter()
            .map(|(name, data)| NetworkInterfaceStats {
                name: name.to_string_lossy().into_owned(),
                bytes_received: data.total_received(),
                bytes_sent: data.total_transmitted(),
                packets_received: data.total_packets_received(),
                packets_sent: data.total_packets_transmitted(),
            })
            .collect();
        network.sort_by(|a, b| a.name.cmp(&b.name));
        GetSystemStatsResponse {
            ts: Some(SystemTime::now().into()),
            cpu_count: system.cpus().len() as u32,
            cpu_percent: f64::from(system.global_cpu_usage()),
            cpu_percent_per_core: system.cpus().iter().map(|c| f64::from(c.usage())).collect(),
            memory_total: system.total_memory(),
            memory_available: system.available_memory(),
            memory_used: system.used_memory(),
            swap_total: system.total_swap(),
            swap_used: system.used_swap(),
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            network,
            boot_uptime: System::uptime().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_memory_cpus_and_loopback() {
        let host = Host::new().unwrap();
        let s = host.stats();
        assert!(s.cpu_count >= 1);
        assert!(s.memory_total > 0 && s.memory_available <= s.memory_total);
        assert_eq!(s.cpu_percent_per_core.len(), s.cpu_count as usize);
        assert!(s.network.iter().any(|n| n.name == "lo"), "{:?}", s.network);
    }
}
