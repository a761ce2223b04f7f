//! Courier: one binary. `courier daemon`, `courier <verb>`, and the CNI plugin whenever
//! `CNI_COMMAND` is set.

mod attach;
mod backend;
mod bench;
mod binding;
mod cli;
mod client;
mod config;
mod daemon;
mod error;
mod frontdoor;
mod hooks;
mod metrics;
mod model;
mod netns;
mod ovn_controller;
mod reconcile;
mod registry;
mod staged;
mod state;
mod vswitch;

use std::path::PathBuf;

fn main() {
    // CNI mode first, and cheaply: no runtime, no logging setup, no argument parsing.
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(frontdoor::cni::run_plugin());
    }
    std::process::exit(cli::main());
}

fn run_daemon(config_path: Option<PathBuf>) -> i32 {
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
