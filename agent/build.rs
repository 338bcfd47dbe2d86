//! Links the agent's hot functions together: `symbol-order.txt` (made by
//! `scripts/agent-symbol-order.sh` from a callgrind profile of a running agent) is passed to the
//! linker as `--symbol-ordering-file`, so the ~1,700 functions an agent runs in steady state sit
//! at the start of `.text` instead of scattered over 10 MiB of it. The kernel maps code 64 KiB
//! around every fault, so clustering them cuts the agent's resident code by about 2 MiB.
//!
//! Only for release builds (the names carry hashes that differ between profiles) and only with
//! lld, the linker rustc uses on x86_64 Linux; names missing from the binary are ignored (a stale
//! list loses its effect without breaking the build; `tests/symbol_order.rs` catches that).

fn main() {
    let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux_x86_64 = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if release && linux_x86_64 && order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=switchyard-agent=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=switchyard-agent=-Wl,--no-warn-symbol-ordering");
    }
}
