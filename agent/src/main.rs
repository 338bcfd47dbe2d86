//! `switchyard-agent`: the agent's binary; the command line lives in [`switchyard_agent::cli`].

fn main() -> std::process::ExitCode {
    switchyard_agent::cli::main()
}
