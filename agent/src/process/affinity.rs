//! CPU affinity of a whole process: `sched_setaffinity` on a pid changes one thread, so every
//! thread in `/proc/<pid>/task/*` is set, then the affinity is read back.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Errors of affinity changes.
#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    /// The `cpus` argument is invalid: what is wrong with it.
    #[error("cpus: {0}")]
    Invalid(String),
    /// The kernel refused.
    #[error("{0}")]
    Os(String),
}

/// The CPUs `pid` (a thread id, or the main thread of a process) may run on, ascending.
pub fn get(pid: u32) -> Result<Vec<u32>, AffinityError> {
    let set = sched_getaffinity(Pid::from_raw(pid as i32))
        .map_err(|e| AffinityError::Os(format!("sched_getaffinity({pid}): {e}")))?;
    Ok((0..CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .map(|i| i as u32)
        .collect())
}

/// Resolves the `cpus` argument of SetCpuAffinity: with `relative`, indexes into `start_cpus`.
pub fn resolve(
    cpus: &[u32],
    relative: bool,
    start_cpus: &[u32],
) -> Result<Vec<u32>, AffinityError> {
    if cpus.is_empty() {
        return Err(AffinityError::Invalid("must not be empty".into()));
    }
    let online = num_cpus_configured();
    let mut out = Vec::with_capacity(cpus.len());
    for &c in cpus {
        let cpu = if relative {
            *start_cpus.get(c as usize).ok_or_else(|| {
                AffinityError::Invalid(format!(
                    "relative index {c} out of range (the process started with {} CPUs: {start_cpus:?})",
                    start_cpus.len()
                ))
            })?
        } else {
            if c >= online {
                return Err(AffinityError::Invalid(format!(
                    "CPU {c} does not exist (this host has CPUs 0..{})",
                    online.saturating_sub(1)
                )));
            }
            c
        };
        out.push(cpu);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Pins every thread of process `pid` to `cpus` and returns the affinity read back.
pub fn set_process(pid: u32, cpus: &[u32]) -> Result<Vec<u32>, AffinityError> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c as usize)
            .map_err(|e| AffinityError::Invalid(format!("CPU {c}: {e}")))?;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| AffinityError::Os(format!("listing threads of {pid}: {e}")))?;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) => {}
            // A thread that exited meanwhile is fine.
            Err(nix::errno::Errno::ESRCH) => {}
            Err(nix::errno::Errno::EINVAL) => {
                return Err(AffinityError::Invalid(format!(
                    "{cpus:?} is not usable by this process (outside its cgroup's CPU set?)"
                )));
            }
            Err(e) => return Err(AffinityError::Os(format!("sched_setaffinity({tid}): {e}"))),
        }
    }
    get(pid)
}

/// Number of CPUs configured on the host.
pub fn num_cpus_configured() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.split('-').next_back()?.parse::<u32>().ok())
                .max()
        })
        .map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            |max| max + 1,
        )
}

/// Logical CPUs online on the host (`/sys/devices/system/cpu/online`, what `nproc --all` and the
/// reference's `psutil.cpu_count()` count), whatever this process's affinity; falls back to the
/// CPUs this process may use.
pub fn logical_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| cpu_list_len(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
}

/// The number of CPUs in a kernel CPU list such as "0-3,6,8-9".
fn cpu_list_len(list: &str) -> Option<u32> {
    let mut n = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse::<u32>().ok()?)? + 1,
            None => part.parse::<u32>().map(|_| 1).ok()?,
        };
    }
    (n > 0).then_some(n)
}

/// Physical core count (distinct (package, core id) pairs), falling back to logical CPUs.
pub fn physical_cores() -> u32 {
    let mut cores = std::collections::BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") {
        for entry in dir.flatten() {
            let topo = entry.path().join("topology");
            let read = |f: &str| std::fs::read_to_string(topo.join(f)).ok();
            if let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) {
                cores.insert((pkg.trim().to_owned(), core.trim().to_owned()));
            }
        }
    }
    if cores.is_empty() {
        logical_cpus()
    } else {
        cores.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_indexes_map_through_the_start_set() {
        assert_eq!(resolve(&[1, 0], true, &[4, 6]).unwrap(), vec![4, 6]);
        assert!(matches!(
            resolve(&[2], true, &[4, 6]),
            Err(AffinityError::Invalid(m)) if m.contains("relative index 2")
        ));
    }

    #[test]
    fn absolute_cpus_must_exist_and_not_be_empty() {
        assert!(
            matches!(resolve(&[], false, &[0]), Err(e @ AffinityError::Invalid(_)) if e.to_string().starts_with("cpus"))
        );
        assert!(matches!(
            resolve(&[100_000], false, &[0]),
            Err(AffinityError::Invalid(_))
        ));
        assert_eq!(resolve(&[0, 0], false, &[0]).unwrap(), vec![0]);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(cpu_list_len("0-3,6,8-9"), Some(7));
        assert_eq!(cpu_list_len("0"), Some(1));
        assert_eq!(cpu_list_len(""), None);
        assert_eq!(cpu_list_len("3-1"), None);
        assert!(logical_cpus() >= physical_cores());
    }

    #[test]
    fn reads_own_affinity() {
        assert!(!get(std::process::id()).unwrap().is_empty());
    }
}
