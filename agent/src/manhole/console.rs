//! The manhole's diagnostic commands, run inside the process that hosts the manhole.

use crate::process::{affinity, gc, info, stats};

/// The help text.
pub const HELP: &str = "\
commands:
  help               this text
  stats              process stats (pid, cpu, memory, context switches, I/O)
  info               open descriptors, threads, files and sockets
  affinity           the CPUs this process may run on
  trim               return freed heap to the OS (like TriggerGc)
  loglevel [FILTER]  show or set the log filter (RUST_LOG syntax)
  uptime             seconds since the process started
  tasks              threads of this process
  exit               close the session
";

/// The outcome of one command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Print this and continue.
    Output(String),
    /// Print this; the command failed (exec exit status 1).
    Error(String),
    /// Close the session.
    Exit,
}

/// Runs one command line for the process `name` started `uptime` seconds ago.
pub fn run(line: &str, uptime: f64) -> Outcome {
    let mut words = line.split_whitespace();
    let Some(command) = words.next() else {
        return Outcome::Output(String::new());
    };
    let pid = std::process::id();
    match command {
        "help" | "?" => Outcome::Output(HELP.to_owned()),
        "exit" | "quit" | "logout" => Outcome::Exit,
        "uptime" => Outcome::Output(format!("{uptime:.3}\n")),
        "stats" => match stats::read(pid) {
            Ok(s) => Outcome::Output(format!(
                "pid: {}\nstatus: {}\nuser: {:.3}\nsystem: {:.3}\nresident: {}\nvirtual: {}\nmem_percent: {:.2}\nvoluntary: {}\nnonvoluntary: {}\nreads: {}\nwrites: {}\nthreads: {}\nfds: {}\n",
                s.pid,
                s.status,
                s.user,
                s.system,
                s.resident,
                s.r#virtual,
                s.mem_percent,
                s.voluntary,
                s.nonvoluntary,
                s.reads,
                s.writes,
                s.threads,
                s.fds
            )),
            Err(e) => Outcome::Error(format!("stats: {e}\n")),
        },
        "info" => match info::current() {
            Ok(i) => {
                let mut out = format!(
                    "pid: {}\ndescriptors: {}\nthreads: {}\nfiles:\n",
                    i.pid, i.descriptors, i.threads
                );
                for f in &i.files {
                    out.push_str(&format!("  {} {}\n", f.fd, f.path));
                }
                out.push_str("sockets:\n");
                for s in &i.sockets {
                    let kind = switchyard::pb::agent::v1::SocketType::try_from(s.r#type)
                        .map_or("?", |t| t.as_str_name());
                    out.push_str(&format!("  {kind} {} {} {}\n", s.local, s.remote, s.status));
                }
                Outcome::Output(out)
            }
            Err(e) => Outcome::Error(format!("info: {e}\n")),
        },
        "affinity" => match affinity::get(pid) {
            Ok(cpus) => Outcome::Output(format!("{cpus:?}\n")),
            Err(e) => Outcome::Error(format!("affinity: {e}\n")),
        },
        "trim" => {
            let r = gc::trim();
            Outcome::Output(format!(
                "duration_ms: {:.3}\nresident_before: {}\nresident_after: {}\n",
                r.duration, r.resident_before, r.resident_after
            ))
        }
        "tasks" => match std::fs::read_dir(format!("/proc/{pid}/task")) {
            Ok(dir) => {
                let mut out = String::new();
                for task in dir.flatten() {
                    let tid = task.file_name().to_string_lossy().into_owned();
                    let comm =
                        std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                    out.push_str(&format!("{tid} {}\n", comm.trim()));
                }
                Outcome::Output(out)
            }
            Err(e) => Outcome::Error(format!("tasks: {e}\n")),
        },
        "loglevel" => match words.next() {
            None => Outcome::Output(format!("{}\n", switchyard::telemetry::current_filter())),
            Some(filter) => match switchyard::telemetry::set_filter(filter) {
                Ok(()) => Outcome::Output(format!("log filter set to {filter}\n")),
                Err(e) => Outcome::Error(format!("loglevel: {e}\n")),
            },
        },
        other => Outcome::Error(format!("unknown command '{other}'; type help\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_names_this_pid() {
        let Outcome::Output(out) = run("stats", 1.0) else {
            panic!()
        };
        assert!(
            out.contains(&format!("pid: {}", std::process::id())),
            "{out}"
        );
    }

    #[test]
    fn unknown_commands_fail_and_exit_exits() {
        assert!(matches!(run("rm -rf /", 0.0), Outcome::Error(_)));
        assert_eq!(run("exit", 0.0), Outcome::Exit);
        assert!(matches!(run("help", 0.0), Outcome::Output(h) if h.contains("loglevel")));
    }
}
