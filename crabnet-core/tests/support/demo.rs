//! A demo network after one whole lifecycle, for the tests that check what its nodes hold and
//! serve (`tests/web.rs`, and `tests/schema.rs`, which includes this file alone with `#[path]`).

use std::path::Path;

use crabnet_core::SeedView;
use crabnet_core::demo::{DemoNetwork, DemoOptions, run_lifecycle};

/// Starts a demo network in `dir` (alice publishes, bob and carol bid) and runs one whole
/// lifecycle of a task that runs `command`: the network and the task's settled seed.
pub async fn demo_after_lifecycle(dir: &Path, command: &str) -> (DemoNetwork, SeedView) {
    let opts = DemoOptions {
        base_dir: Some(dir.to_path_buf()),
        command: command.into(),
        ..DemoOptions::default()
    };
    let net = DemoNetwork::start(&opts).await.unwrap();
    let seed = run_lifecycle(&net, &opts, &mut |_| {}).await.unwrap();
    (net, seed)
}
