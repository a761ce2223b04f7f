//! Courier as a library: the modules the `courier` binary is made of (src/main.rs is only its
//! entry point), so integration tests under tests/ can drive a backend or binding directly
//! against the real component. Not a stable API.

pub mod attach;
pub mod backend;
pub mod bench;
pub mod binding;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod error;
pub mod frontdoor;
pub mod hooks;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod ovn_controller;
pub mod pool;
pub mod reconcile;
pub mod registry;
pub mod staged;
pub mod state;
pub mod vswitch;

use std::path::PathBuf;

/// `courier daemon`: logging, the config, a runtime, and the daemon until it stops. The exit
/// code.
pub fn run_daemon(config_path: Option<PathBuf>) -> i32 {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("COURIER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("COURIER_LOG_FORMAT").is_ok_and(|v| v == "json");
    if json {
        fmt()
            .with_env_filter(filter)
            .json()
            .with_writer(std::io::stderr)
            .init();
    } else {
        fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let config = match config::Config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(daemon::run(config)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "daemon failed");
            eprintln!("error: {e}");
            1
        }
    }
}
