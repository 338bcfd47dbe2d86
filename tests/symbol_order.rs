//! The agent's hot-function list must still describe the agent we ship.
//!
//! `agent/symbol-order.txt` (see `agent/build.rs`) keeps the agent's idle RSS at ~8 MiB instead
//! of ~12 by linking the functions it runs together. Its names carry crate hashes, so after a
//! dependency or toolchain upgrade the list can stop matching the release binary: nothing breaks,
//! but the memory saving silently disappears. This test builds the release binaries the way users
//! do and fails, naming the fix, when the list no longer matches them.

mod common;

use std::collections::HashMap;
use std::process::Command;

#[test]
fn the_agent_symbol_order_list_matches_the_release_agent() {
    let listed: Vec<String> =
        std::fs::read_to_string(common::repo().join("agent/symbol-order.txt"))
            .expect("agent/symbol-order.txt")
            .lines()
            .map(str::to_owned)
            .collect();
    assert!(
        listed.len() > 1000,
        "the list is implausibly short: {} names",
        listed.len()
    );

    let agent = common::build_bins(true).join("switchyard-agent");
    let nm = Command::new("nm")
        .arg("--defined-only")
        .arg(&agent)
        .output()
        .expect("run nm (Debian package binutils)");
    assert!(nm.status.success(), "nm {}: {nm:?}", agent.display());
    // Function symbols (text section) and their addresses.
    let address: HashMap<String, u64> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let name = f.next()?;
            matches!(kind, "t" | "T").then(|| (name.to_owned(), addr))
        })
        .collect();
    let missing: Vec<&String> = listed
        .iter()
        .filter(|n| !address.contains_key(*n))
        .collect();
    let matched = listed.len() - missing.len();
    assert!(
        matched * 100 >= listed.len() * 95,
        "only {matched} of {} names in agent/symbol-order.txt are functions of the release agent \
         (first missing: {:?}); the list is stale: run scripts/agent-symbol-order.sh and commit it",
        listed.len(),
        &missing[..missing.len().min(5)]
    );

    // The list is applied: the linker lays the listed functions out in the list's order, so
    // their addresses rise along it (in a binary linked without it, about half the steps would).
    let in_order: Vec<u64> = listed
        .iter()
        .filter_map(|n| address.get(n).copied())
        .collect();
    let rising = in_order.windows(2).filter(|w| w[0] < w[1]).count();
    assert!(
        rising * 100 >= (in_order.len() - 1) * 95,
        "only {rising} of {} consecutive listed functions are laid out in list order: \
         agent/build.rs did not pass the list to the linker",
        in_order.len() - 1
    );
}
