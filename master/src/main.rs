//! `switchyard-master`: the master's binary; the command line lives in [`switchyard_master::cli`].

fn main() -> std::process::ExitCode {
    switchyard_master::cli::main()
}
