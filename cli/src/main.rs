//! `switchyard`: the command line of the admin API (see `switchyard_cli`).

fn main() -> std::process::ExitCode {
    switchyard_cli::main()
}
