//! Test support shared by every crate's integration tests.
//!
//! A test that cannot run here (not root, a tool missing) calls [`skip`]: it prints
//! `SKIP <test>: <reason>`, appends the line to `$COURIER_SKIP_LOG` (scripts/test.sh counts
//! them) and the test returns. With `COURIER_REQUIRE_ENV=1` (CI) it panics instead: a skip there
//! is a failure, never a silent pass.

use std::io::Write;

pub fn skip(test: &str, reason: &str) {
    if std::env::var("COURIER_REQUIRE_ENV").as_deref() == Ok("1") {
        panic!("{test}: environment required (COURIER_REQUIRE_ENV=1) but: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    if let Ok(log) = std::env::var("COURIER_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            // One write of the whole line: with O_APPEND it cannot interleave with another
            // test's line (tests run on several threads).
            let _ = f.write_all(format!("{test}: {reason}\n").as_bytes());
        }
    }
}

/// Ok when running as root; Err with a reason to pass to [`skip`].
pub fn require_root(why: &str) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(format!("needs root ({why})"))
    }
}
