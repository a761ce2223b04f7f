//! Courier: one binary. `courier daemon`, `courier <verb>`, and the CNI plugin whenever
//! `CNI_COMMAND` is set.

use courier::{cli, frontdoor};

fn main() {
    // CNI mode first, and cheaply: no runtime, no logging setup, no argument parsing.
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(frontdoor::cni::run_plugin());
    }
    std::process::exit(cli::main());
}
