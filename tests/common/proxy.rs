//! A fault-injecting proxy to a real OVSDB server's unix socket, private to one test: the daemon
//! under test connects to the proxy, and the test decides what the "server" does — forward
//! faithfully, cut every connection (and refuse new ones), or go half-open (accept and keep
//! connections, but never answer). The real server is never touched.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Mode {
    Forward = 0,
    /// Every connection closed; new ones closed at once.
    Cut = 1,
    /// Connections stay open, bytes are swallowed both ways, nothing ever answers.
    HalfOpen = 2,
}

trait Conn: Read + Write + Send {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>>;
    fn shut(&self);
}
impl Conn for UnixStream {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}
impl Conn for TcpStream {
    fn try_clone_box(&self) -> std::io::Result<Box<dyn Conn>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shut(&self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

struct Shared {
    mode: AtomicU8,
    /// `unix:PATH` (or a bare path) or `tcp:HOST:PORT`.
    upstream: String,
    /// Both ends of every live connection, to cut them.
    live: Mutex<Vec<Box<dyn Conn>>>,
    /// HTTP only: requests whose request line starts with the method and contains the path
    /// part of one of these are answered 403 here (a Neutron that refuses them), the rest
    /// forwarded. Checked on a connection's first request (Neutron's uwsgi closes each one).
    refuse: Mutex<Vec<(String, String)>>,
    /// HTTP: the request lines seen from clients (`GET /v2.0/networks?limit=1 HTTP/1.1`).
    requests: Mutex<Vec<String>>,
}

pub struct Proxy {
    /// What to give the daemon as its remote: `unix:PATH` or `tcp:127.0.0.1:PORT`.
    pub remote: String,
    shared: Arc<Shared>,
    path: Option<PathBuf>,
}

impl Proxy {
    /// Listens on the unix socket `listen`, forwarding to the unix socket `upstream`.
    pub fn unix(listen: &Path, upstream: &str) -> Proxy {
        let _ = std::fs::remove_file(listen);
        let l = UnixListener::bind(listen).expect("proxy bind");
        let shared = Self::shared(upstream);
        let s = shared.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                serve(&s, Box::new(c));
            }
        });
        Proxy {
            remote: format!("unix:{}", listen.display()),
            shared,
            path: Some(listen.to_path_buf()),
        }
    }

    /// Listens on 127.0.0.1 (a free port), forwarding to `upstream` (`unix:PATH` or
    /// `tcp:HOST:PORT`).
    pub fn tcp(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = l.local_addr().expect("addr").port();
        let shared = Self::shared(upstream);
        let s = shared.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let _ = c.set_nodelay(true);
                serve(&s, Box::new(c));
            }
        });
        Proxy {
            remote: format!("tcp:127.0.0.1:{port}"),
            shared,
            path: None,
        }
    }

    fn shared(upstream: &str) -> Arc<Shared> {
        Arc::new(Shared {
            mode: AtomicU8::new(Mode::Forward as u8),
            upstream: upstream.to_string(),
            live: Mutex::new(Vec::new()),
            refuse: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        })
    }

    /// HTTP: answer `METHOD ...PATH_PART...` requests with 403 from now on (see `Shared::refuse`).
    pub fn refuse(&self, method: &str, path_part: &str) {
        let mut r = self.shared.refuse.lock().unwrap();
        r.push((method.to_string(), path_part.to_string()));
    }

    /// HTTP: forward everything again.
    pub fn refuse_nothing(&self) {
        self.shared.refuse.lock().unwrap().clear();
    }

    /// HTTP: the request lines forwarded so far whose method is `method` and whose target
    /// contains `part`.
    pub fn requests(&self, method: &str, part: &str) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.starts_with(&format!("{method} "))
                    && l.split(' ').nth(1).is_some_and(|t| t.contains(part))
            })
            .cloned()
            .collect()
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
        if mode == Mode::Cut {
            for c in self.shared.live.lock().unwrap().drain(..) {
                c.shut();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set(Mode::Cut);
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn mode(s: &Shared) -> Mode {
    match s.mode.load(Ordering::SeqCst) {
        0 => Mode::Forward,
        1 => Mode::Cut,
        _ => Mode::HalfOpen,
    }
}

fn serve(s: &Arc<Shared>, mut client: Box<dyn Conn>) {
    if mode(s) == Mode::Cut {
        client.shut();
        return;
    }
    // The first bytes, to see the request line when some requests are refused.
    let mut first = Vec::new();
    if !s.refuse.lock().unwrap().is_empty() {
        let mut buf = [0u8; 16384];
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => first.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&first);
        let line = text.lines().next().unwrap_or("");
        let refused = s.refuse.lock().unwrap().iter().any(|(m, p)| {
            line.starts_with(&format!("{m} "))
                && line
                    .split(' ')
                    .nth(1)
                    .is_some_and(|u| u.contains(p.as_str()))
        });
        if refused {
            let body = r#"{"NeutronError": {"type": "HTTPForbidden", "message": "refused by the test's proxy", "detail": ""}}"#;
            let _ = write!(
                client,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.shut();
            return;
        }
    }
    let mut up: Box<dyn Conn> = match s.upstream.strip_prefix("tcp:") {
        Some(addr) => match TcpStream::connect(addr) {
            Ok(t) => Box::new(t),
            Err(_) => {
                client.shut();
                return;
            }
        },
        None => {
            let path = s.upstream.strip_prefix("unix:").unwrap_or(&s.upstream);
            match UnixStream::connect(path) {
                Ok(u) => Box::new(u),
                Err(_) => {
                    client.shut();
                    return;
                }
            }
        }
    };
    if !first.is_empty() {
        note_requests(s, &first);
    }
    if !first.is_empty() && up.write_all(&first).is_err() {
        client.shut();
        return;
    }
    let (Ok(c2), Ok(u2)) = (client.try_clone_box(), up.try_clone_box()) else {
        return;
    };
    {
        let mut live = s.live.lock().unwrap();
        live.push(c2);
        live.push(u2);
    }
    let (Ok(c_rd), Ok(u_rd)) = (client.try_clone_box(), up.try_clone_box()) else {
        return;
    };
    let (s1, s2) = (s.clone(), s.clone());
    std::thread::spawn(move || pump(&s1, c_rd, up, true));
    std::thread::spawn(move || pump(&s2, u_rd, client, false));
}

/// Records the HTTP request lines in `bytes` from a client (a request's head comes in one
/// write from the clients under test, so a line is not split across reads).
fn note_requests(s: &Shared, bytes: &[u8]) {
    const METHODS: [&str; 6] = ["GET ", "POST ", "PUT ", "DELETE ", "PATCH ", "HEAD "];
    let text = String::from_utf8_lossy(bytes);
    let mut seen = s.requests.lock().unwrap();
    for line in text.split("\r\n") {
        if METHODS.iter().any(|m| line.starts_with(m)) && line.ends_with(" HTTP/1.1") {
            seen.push(line.to_string());
        }
    }
}

/// Copies `from` → `to` while forwarding; swallows while half-open; stops when cut or closed.
/// `from_client`: the bytes are a client's (their HTTP request lines are recorded).
fn pump(s: &Shared, mut from: Box<dyn Conn>, mut to: Box<dyn Conn>, from_client: bool) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match mode(s) {
            Mode::Forward => {
                if from_client {
                    note_requests(s, &buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Mode::HalfOpen => {}
            Mode::Cut => break,
        }
    }
    to.shut();
    from.shut();
    std::thread::sleep(Duration::from_millis(1));
}
