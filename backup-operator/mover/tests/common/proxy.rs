//! A fault-injecting HTTP proxy on 127.0.0.1 in front of moto. One request
//! per connection (it asks moto for `Connection: close`); a request that
//! matches a rule gets the rule's fault instead of (or on its way to) moto.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Fault {
    /// An S3 error response, e.g. `(503, "SlowDown")`.
    Status(u16, &'static str),
    /// The connection is reset (RST) without a response.
    Reset,
    /// No response for this long, then the connection is closed.
    Stall(Duration),
    /// Forwarded without this request header (a server that ignores it).
    StripHeader(&'static str),
    /// Forwarded after this delay (a slow server).
    Delay(Duration),
}

/// Faults for a share of all requests that no rule matches: each request is
/// faulty with probability `rate` (seeded, so runs repeat), taking the kinds
/// in turn.
struct Random {
    state: u64,
    rate: f64,
    kinds: Vec<Fault>,
    next: usize,
    enabled: bool,
}

impl Random {
    fn decide(&mut self) -> Option<Fault> {
        if !self.enabled || self.kinds.is_empty() {
            return None;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        if (self.state >> 11) as f64 / (1u64 << 53) as f64 >= self.rate {
            return None;
        }
        self.next = (self.next + 1) % self.kinds.len();
        Some(self.kinds[self.next].clone())
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Option<&'static str>,
    /// Substring of the request path (after the bucket), e.g. `/locks/`.
    pub path: String,
    pub fault: Fault,
    /// How many requests get the fault (`None`: all).
    pub times: Option<u32>,
}

impl Rule {
    pub fn new(method: Option<&'static str>, path: &str, fault: Fault, times: Option<u32>) -> Self {
        Self {
            method,
            path: path.to_string(),
            fault,
            times,
        }
    }
}

pub struct Proxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
    random: Arc<Mutex<Option<Random>>>,
    faults: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

struct Request {
    method: String,
    path: String,
    head: Vec<String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut head = vec![first.trim_end().to_string()];
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
        head.push(line);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        head,
        body,
    })
}

fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn forward(req: &Request, strip: Option<&str>, upstream: u16, client: &mut TcpStream) {
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let mut out = String::new();
    for (i, h) in req.head.iter().enumerate() {
        let name = h.split(':').next().unwrap_or_default();
        if i > 0
            && (name.eq_ignore_ascii_case("connection")
                || strip.is_some_and(|s| name.eq_ignore_ascii_case(s)))
        {
            continue;
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    if up.write_all(out.as_bytes()).is_err() || up.write_all(&req.body).is_err() {
        return;
    }
    let _ = std::io::copy(&mut up, client);
}

fn serve(
    client: TcpStream,
    upstream: u16,
    rules: &Mutex<Vec<Rule>>,
    random: &Mutex<Option<Random>>,
    faults: &AtomicU64,
    requests: &AtomicU64,
) {
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let Some(req) = read_request(&mut reader) else {
        return;
    };
    requests.fetch_add(1, Ordering::Relaxed);
    let fault = {
        let mut rules = rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rules
            .iter_mut()
            .find(|r| {
                r.times != Some(0)
                    && r.method.is_none_or(|m| m == req.method)
                    && req.path.contains(&r.path)
            })
            .map(|r| {
                if let Some(n) = r.times.as_mut() {
                    *n -= 1;
                }
                r.fault.clone()
            })
    };
    let fault = fault.or_else(|| {
        random
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .and_then(Random::decide)
    });
    let mut client = client;
    match fault {
        None => forward(&req, None, upstream, &mut client),
        Some(f) => {
            faults.fetch_add(1, Ordering::Relaxed);
            match f {
                Fault::Status(code, s3code) => {
                    let body = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3code}</Code>\
                         <Message>injected by the test proxy</Message></Error>"
                    );
                    let _ = write!(
                        client,
                        "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Fault::Reset => reset(&client),
                Fault::Stall(d) => std::thread::sleep(d),
                Fault::StripHeader(h) => forward(&req, Some(h), upstream, &mut client),
                Fault::Delay(d) => {
                    std::thread::sleep(d);
                    forward(&req, None, upstream, &mut client);
                }
            }
        }
    }
}

impl Proxy {
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let rules = Arc::new(Mutex::new(Vec::new()));
        let random = Arc::new(Mutex::new(None));
        let faults = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, rnd, f, q, st) = (
            rules.clone(),
            random.clone(),
            faults.clone(),
            requests.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, rnd, f, q) = (r.clone(), rnd.clone(), f.clone(), q.clone());
                std::thread::spawn(move || serve(conn, upstream, &r, &rnd, &f, &q));
            }
        });
        Self {
            port,
            rules,
            random,
            faults,
            requests,
            stop,
        }
    }

    /// The repository URL of `bucket/path` through this proxy.
    pub fn repo(&self, bucket_and_path: &str) -> String {
        format!("s3:http://127.0.0.1:{}/{bucket_and_path}", self.port)
    }

    pub fn add(&self, rule: Rule) {
        self.rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(rule);
    }

    /// Also fault a `rate` share of the requests no rule matches, taking
    /// `kinds` in turn (seeded: the same run gets the same faults).
    pub fn random_faults(&self, seed: u64, rate: f64, kinds: Vec<Fault>) {
        *self
            .random
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Random {
            state: seed | 1,
            rate,
            kinds,
            next: 0,
            enabled: true,
        });
    }

    /// Pauses (or resumes) the random faults, e.g. while a test checks.
    pub fn set_random_enabled(&self, on: bool) {
        if let Some(r) = self
            .random
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            r.enabled = on;
        }
    }

    pub fn clear(&self) {
        self.rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Faults served so far.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
