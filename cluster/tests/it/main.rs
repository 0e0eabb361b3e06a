//! Integration tests of `fleet cluster` with the real `fleet` binary (built by
//! `cargo test --workspace`; skipped with a notice when absent).

mod cluster_up_down;

use std::path::PathBuf;

/// `target/<profile>/fleet`, next to this test's `deps/` directory.
pub fn fleet_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let binary = deps.parent()?.join("fleet");
    binary.is_file().then_some(binary)
}
