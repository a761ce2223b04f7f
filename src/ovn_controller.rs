//! The local ovn-controller, asked over its unixctl socket (JSON-RPC, like `ovn-appctl -t
//! ovn-controller connection-status`): is this host's chassis connected to the Southbound DB?
//! Without that no port on this host is ever bound, whatever NB and the local OVS DB say.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

const RUN_DIR: &str = "/var/run/ovn";
const TIMEOUT: Duration = Duration::from_secs(2);

/// The control socket: `configured` if set, else `/var/run/ovn/ovn-controller.<pid>.ctl` from
/// its pidfile (what ovn-appctl does).
pub fn ctl_path(configured: &str) -> Result<PathBuf> {
    if !configured.is_empty() {
        return Ok(PathBuf::from(configured));
    }
    let pidfile = Path::new(RUN_DIR).join("ovn-controller.pid");
    let pid = std::fs::read_to_string(&pidfile).map_err(|e| {
        Error::Unavailable(format!(
            "ovn-controller is not running on this host ({}: {e}): start it (scripts/ovn.sh start)",
            pidfile.display()
        ))
    })?;
    Ok(Path::new(RUN_DIR).join(format!("ovn-controller.{}.ctl", pid.trim())))
}

/// Ok when ovn-controller answers and reports "connected" to the Southbound DB.
pub async fn check_connected(configured: &str) -> Result<()> {
    let path = ctl_path(configured)?;
    let shown = path.display().to_string();
    let status = tokio::time::timeout(TIMEOUT, connection_status(&path))
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "ovn-controller did not answer on {shown} within {TIMEOUT:?}"
            ))
        })?
        .map_err(|e| Error::Unavailable(format!("ovn-controller at {shown}: {e}")))?;
    if status.trim() == "connected" {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "ovn-controller is {:?}, not connected to the Southbound DB: check its ovn-remote and log",
            status.trim()
        )))
    }
}

async fn connection_status(path: &Path) -> std::io::Result<String> {
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(br#"{"id":0,"method":"connection-status","params":[]}"#)
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before replying"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf) {
            return match v.get("result").and_then(|r| r.as_str()) {
                Some(r) => Ok(r.to_string()),
                None => Err(std::io::Error::other(format!("unexpected reply {v}"))),
            };
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("reply too long"));
        }
    }
}
