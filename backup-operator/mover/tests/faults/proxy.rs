//! A fault-injecting HTTP proxy for S3 tests, on 127.0.0.1 in front of moto.
//!
//! One request per client connection: the proxy reads the request, asks its
//! plan what to do, and then forwards it (adding `Connection: close`, so the
//! response ends at EOF), answers with an S3 error (500 InternalError,
//! 503 SlowDown, 429), resets the connection, or forwards it late (a stall).
//! Counters say how many of each were injected.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Error500,
    SlowDown503,
    Throttle429,
    /// Read the request, then close with a TCP reset, no response.
    Reset,
    /// Forward after a delay.
    Stall(Duration),
}

#[derive(Default, Debug)]
pub struct Counts {
    pub requests: AtomicU64,
    pub error500: AtomicU64,
    pub slowdown503: AtomicU64,
    pub throttle429: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
}

impl Counts {
    pub fn injected(&self) -> u64 {
        [
            &self.error500,
            &self.slowdown503,
            &self.throttle429,
            &self.resets,
            &self.stalls,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Deterministic plan: each request is faulty with probability `rate`
/// (seeded), cycling through the fault kinds.
pub struct Plan {
    state: u64,
    rate: f64,
    next_kind: usize,
    pub enabled: bool,
}

impl Plan {
    pub fn new(seed: u64, rate: f64) -> Self {
        Self {
            state: seed | 1,
            rate,
            next_kind: 0,
            enabled: true,
        }
    }

    fn random(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    fn decide(&mut self) -> Fault {
        if !self.enabled || self.random() >= self.rate {
            return Fault::Pass;
        }
        const KINDS: [Fault; 5] = [
            Fault::SlowDown503,
            Fault::Error500,
            Fault::Reset,
            Fault::Throttle429,
            Fault::Stall(Duration::from_millis(1500)),
        ];
        self.next_kind = (self.next_kind + 1) % KINDS.len();
        KINDS[self.next_kind]
    }
}

pub struct FaultProxy {
    pub port: u16,
    pub counts: Arc<Counts>,
    pub plan: Arc<Mutex<Plan>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: u16, plan: Plan) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let counts = Arc::new(Counts::default());
        let plan = Arc::new(Mutex::new(plan));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, p, st) = (counts.clone(), plan.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (c, p) = (c.clone(), p.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &c, &p);
                });
            }
        });
        Self {
            port,
            counts,
            plan,
            stop,
        }
    }

    pub fn set_enabled(&self, on: bool) {
        if let Ok(mut p) = self.plan.lock() {
            p.enabled = on;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request: head (up to the blank line) and a Content-Length body.
fn read_request(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&byte[..n]);
    }
    Ok((head, body))
}

fn s3_error(conn: &mut TcpStream, status: &str, code: &str) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
    );
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn serve(
    mut conn: TcpStream,
    upstream: u16,
    c: &Counts,
    plan: &Mutex<Plan>,
) -> std::io::Result<()> {
    let (head, body) = read_request(&mut conn)?;
    c.requests.fetch_add(1, Ordering::Relaxed);
    let fault = plan.lock().map(|mut p| p.decide()).unwrap_or(Fault::Pass);
    match fault {
        Fault::Error500 => {
            c.error500.fetch_add(1, Ordering::Relaxed);
            return s3_error(&mut conn, "500 Internal Server Error", "InternalError");
        }
        Fault::SlowDown503 => {
            c.slowdown503.fetch_add(1, Ordering::Relaxed);
            return s3_error(&mut conn, "503 Slow Down", "SlowDown");
        }
        Fault::Throttle429 => {
            c.throttle429.fetch_add(1, Ordering::Relaxed);
            return s3_error(&mut conn, "429 Too Many Requests", "TooManyRequests");
        }
        Fault::Reset => {
            c.resets.fetch_add(1, Ordering::Relaxed);
            // SO_LINGER 0: close sends RST instead of FIN.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid socket fd and option struct.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&conn),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            return Ok(());
        }
        Fault::Stall(d) => {
            c.stalls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(d);
        }
        Fault::Pass => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut out = String::new();
    for line in head.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || line.is_empty() {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    conn.write_all(&resp)?;
    conn.shutdown(Shutdown::Write)
}
