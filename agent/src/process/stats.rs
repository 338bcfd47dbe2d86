//! Process counters from `/proc/<pid>` (the reference's `get_process_stats` shape), and a
//! [`Sampler`] that turns successive samples into `cpu_percent` and per-second rates.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use procfs::WithCurrentSystemInfo;
use procfs::process::Process;
use switchyard::pb::agent::v1::{GetProcessMonitorResponse, ProcessStats};

/// Reads the counters of `pid` now.
pub fn read(pid: u32) -> procfs::ProcResult<ProcessStats> {
    let process = Process::new(pid as i32)?;
    let stat = process.stat()?;
    let status = process.status()?;
    // /proc/<pid>/io needs ptrace access; a process we may not inspect still reports the rest.
    let io = process.io().ok();
    let ticks = procfs::ticks_per_second() as f64;
    let resident = stat.rss_bytes().get();
    let total = total_memory();
    let now = SystemTime::now();
    Ok(ProcessStats {
        ts: Some(now.into()),
        time: now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
        pid,
        status: state_name(stat.state).to_owned(),
        voluntary: status.voluntary_ctxt_switches.unwrap_or(0),
        nonvoluntary: status.nonvoluntary_ctxt_switches.unwrap_or(0),
        user: stat.utime as f64 / ticks,
        system: stat.stime as f64 / ticks,
        cpu_percent: 0.0,
        resident,
        r#virtual: stat.vsize,
        mem_percent: if total > 0 {
            resident as f64 * 100.0 / total as f64
        } else {
            0.0
        },
        reads: io.as_ref().map_or(0, |io| io.syscr),
        writes: io.as_ref().map_or(0, |io| io.syscw),
        read_bytes: io.as_ref().map_or(0, |io| io.read_bytes),
        write_bytes: io.as_ref().map_or(0, |io| io.write_bytes),
        threads: stat.num_threads.max(0) as u32,
        fds: process.fd_count().unwrap_or(0) as u32,
    })
}

/// The host's memory in bytes (read once; it does not change under a running process).
fn total_memory() -> u64 {
    static TOTAL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        procfs::Current::current()
            .map(|m: procfs::Meminfo| m.mem_total)
            .unwrap_or(0)
    })
}

fn state_name(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk-sleep",
        'T' | 't' => "stopped",
        'Z' => "zombie",
        'X' | 'x' => "dead",
        'I' => "idle",
        _ => "unknown",
    }
}

/// Remembers the previous sample of one process, for rates between samples.
#[derive(Debug, Default)]
pub struct Sampler {
    previous: Option<(Instant, ProcessStats)>,
}

impl Sampler {
    /// Reads `pid` and fills `cpu_percent` from the previous sample (0 on the first).
    pub fn sample(&mut self, pid: u32) -> procfs::ProcResult<ProcessStats> {
        Ok(self.monitor(pid)?.stats.unwrap_or_default())
    }

    /// Reads `pid` and returns the counters plus per-second rates since the previous call.
    pub fn monitor(&mut self, pid: u32) -> procfs::ProcResult<GetProcessMonitorResponse> {
        let now = Instant::now();
        let mut stats = read(pid)?;
        let mut out = GetProcessMonitorResponse::default();
        if let Some((then, prev)) = self.previous.as_ref().filter(|(_, p)| p.pid == pid) {
            let dt = now.duration_since(*then).as_secs_f64();
            if dt > 0.0 {
                let rate = |a: f64, b: f64| (a - b).max(0.0) / dt;
                out.elapsed = dt;
                out.voluntary_per_sec = rate(stats.voluntary as f64, prev.voluntary as f64);
                out.nonvoluntary_per_sec =
                    rate(stats.nonvoluntary as f64, prev.nonvoluntary as f64);
                out.user_per_sec = rate(stats.user, prev.user);
                out.system_per_sec = rate(stats.system, prev.system);
                out.reads_per_sec = rate(stats.reads as f64, prev.reads as f64);
                out.writes_per_sec = rate(stats.writes as f64, prev.writes as f64);
                stats.cpu_percent = (out.user_per_sec + out.system_per_sec) * 100.0;
            }
        }
        self.previous = Some((now, stats.clone()));
        out.stats = Some(stats);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = read(std::process::id()).unwrap();
        assert_eq!(s.pid, std::process::id());
        assert!(s.resident > 0 && s.r#virtual >= s.resident);
        assert!(s.threads >= 1 && s.fds >= 3);
        assert!(s.time > 0);
    }

    #[test]
    fn sampler_computes_rates_from_the_previous_sample() {
        let mut sampler = Sampler::default();
        let first = sampler.monitor(std::process::id()).unwrap();
        assert_eq!(first.elapsed, 0.0);
        // Burn some CPU so that user time advances.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let second = sampler.monitor(std::process::id()).unwrap();
        assert!(second.elapsed > 0.0);
        assert!(second.stats.unwrap().cpu_percent >= 0.0);
    }

    #[test]
    fn unknown_pid_is_an_error() {
        assert!(read(u32::MAX / 2).is_err());
    }
}
