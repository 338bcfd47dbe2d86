//! The `switchyard` command line: the master's admin API with the reference's vocabulary
//! (`webcluster add-node`, `routercluster add-workergroup`, ...), objects by name, tables for
//! people and `-o json` (the API's canonical JSON, as grpcurl prints it) for scripts.
//!
//! - [`args`]: the command line.
//! - [`connect`]: the mTLS channel to the master from `--pki-dir` or `--ca/--cert/--key`.
//! - [`output`]: tables and JSON.
//! - [`commands`]: one function per command; [`tokens`]: join tokens.
//!
//! Exit codes: 0 success; 1 the API refused or failed (one line: code, reason, message); 2 bad
//! usage (clap); 64 unusable configuration (missing certificate files, bad address).

pub mod args;
pub mod commands;
pub mod connect;
pub mod output;
pub mod tokens;

use std::process::ExitCode;

use clap::Parser;

/// A failure, printed as one line.
#[derive(Debug)]
pub enum Failure {
    /// The API answered with an error status.
    Api(tonic::Status),
    /// The configuration (address, certificates, flags' values) is unusable.
    Config(String),
    /// Anything else (I/O, output).
    Other(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Api(s)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Api(s) => {
                let code = format!("{:?}", s.code());
                let code = upper_snake(&code);
                match switchyard::error::reason_of(s) {
                    Some(reason) => write!(f, "{code} ({reason}): {}", s.message()),
                    None => write!(f, "{code}: {}", s.message()),
                }
            }
            Failure::Config(m) | Failure::Other(m) => f.write_str(m),
        }
    }
}

/// `NotFound` → `NOT_FOUND` (the gRPC code names people see in docs and grpcurl).
fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Runs the command line; returns the exit code.
pub fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                Failure::Config(_) => ExitCode::from(switchyard::EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_one_line_with_code_and_reason() {
        let s = switchyard::error::status(
            switchyard::error::Reason::NoSuchObject,
            "no web cluster 'nope'",
        );
        assert_eq!(
            Failure::Api(s).to_string(),
            "NOT_FOUND (NO_SUCH_OBJECT): no web cluster 'nope'"
        );
        assert_eq!(upper_snake("FailedPrecondition"), "FAILED_PRECONDITION");
    }
}
