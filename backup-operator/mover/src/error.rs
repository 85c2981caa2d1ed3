//! Mapping of rustic / opendal / io errors to the stable [`ErrorKind`]s.

use std::error::Error as StdError;
use std::fmt;

use crate::result::ErrorKind;

/// The mover's error: a kind for the operator plus a human message with context.
#[derive(Debug)]
pub struct MoverError {
    pub kind: ErrorKind,
    pub message: String,
}

pub type MResult<T> = Result<T, MoverError>;

impl MoverError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Classify any error (walking its source chain) and prefix `context`.
    pub fn classify(context: &str, err: &(dyn StdError + 'static)) -> Self {
        let kind = classify(err);
        Self::new(kind, format!("{context}: {}", chain_message(err)))
    }

    pub fn rustic(context: &str, err: &rustic_core::RusticError) -> Self {
        if err.is_incorrect_password() {
            return Self::new(
                ErrorKind::WrongPassword,
                format!("{context}: the repository password does not open any key"),
            );
        }
        Self::classify(context, err)
    }

    /// Prefixes the message with what was being done; the kind stays.
    pub fn context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for MoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl StdError for MoverError {}

/// Extension to add context to results of rustic calls.
pub trait RusticCtx<T> {
    fn ctx(self, context: &str) -> MResult<T>;
}

impl<T> RusticCtx<T> for Result<T, Box<rustic_core::RusticError>> {
    fn ctx(self, context: &str) -> MResult<T> {
        self.map_err(|e| MoverError::rustic(context, &e))
    }
}

impl<T> RusticCtx<T> for std::io::Result<T> {
    fn ctx(self, context: &str) -> MResult<T> {
        self.map_err(|e| MoverError::classify(context, &e))
    }
}

impl<T> RusticCtx<T> for Result<T, opendal::Error> {
    fn ctx(self, context: &str) -> MResult<T> {
        self.map_err(|e| MoverError::classify(context, &e))
    }
}

/// Full message of an error and its sources, deduplicated, single line.
pub fn chain_message(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustic_core::RusticError>() {
            // display_log is the concise form and already includes two source levels.
            let s = r.display_log().replace('\n', " ");
            parts.push(s.trim_start_matches("Error: ").to_string());
            break;
        }
        // opendal's Display adds request context incl. all response headers.
        let s = match e.downcast_ref::<opendal::Error>() {
            Some(o) => format!("{}: {}", o.kind(), o.message()),
            None => e.to_string(),
        };
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn classify(err: &(dyn StdError + 'static)) -> ErrorKind {
    // Structured kinds first, innermost wins for io errors.
    let mut found: Option<ErrorKind> = None;
    let mut text = String::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        text.push_str(&e.to_string());
        text.push('\n');
        if let Some(m) = e.downcast_ref::<MoverError>() {
            return m.kind;
        }
        if let Some(r) = e.downcast_ref::<rustic_core::RusticError>()
            && r.is_incorrect_password()
        {
            return ErrorKind::WrongPassword;
        }
        if let Some(o) = e.downcast_ref::<opendal::Error>() {
            let k = match o.kind() {
                opendal::ErrorKind::PermissionDenied => Some(ErrorKind::PermissionDenied),
                opendal::ErrorKind::NotFound => Some(ErrorKind::NotFound),
                _ => None,
            };
            if k.is_some() {
                found = k;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let k = match io.kind() {
                std::io::ErrorKind::PermissionDenied => Some(ErrorKind::PermissionDenied),
                std::io::ErrorKind::NotFound => Some(ErrorKind::NotFound),
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable => Some(ErrorKind::EndpointUnreachable),
                _ => None,
            };
            if k.is_some() {
                found = k;
            }
        }
        cur = e.source();
    }
    let by_text = classify_text(&text);
    match (found, by_text) {
        // S3 "NoSuchBucket" is reported as NotFound by opendal.
        (_, Some(ErrorKind::BucketMissing)) => ErrorKind::BucketMissing,
        (Some(k), _) => k,
        (None, Some(k)) => k,
        (None, None) => ErrorKind::Other,
    }
}

/// Text fallback for errors that only carry a message (HTTP client errors).
pub fn classify_text(text: &str) -> Option<ErrorKind> {
    let t = text.to_ascii_lowercase();
    if t.contains("nosuchbucket") || t.contains("bucket does not exist") {
        Some(ErrorKind::BucketMissing)
    } else if t.contains("accessdenied")
        || t.contains("access denied")
        || t.contains("invalidaccesskeyid")
        || t.contains("signaturedoesnotmatch")
        || t.contains("permission denied")
        || t.contains("forbidden")
    {
        Some(ErrorKind::PermissionDenied)
    } else if t.contains("connection refused")
        || t.contains("error sending request")
        || t.contains("dns error")
        || t.contains("failed to lookup address")
        || t.contains("tcp connect")
        || t.contains("timed out")
        || t.contains("connect error")
        || t.contains("network is unreachable")
        || t.contains("no route to host")
    {
        Some(ErrorKind::EndpointUnreachable)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_kinds() {
        assert_eq!(
            classify_text("NotFound (persistent) at list => <Code>NoSuchBucket</Code>"),
            Some(ErrorKind::BucketMissing)
        );
        assert_eq!(
            classify_text(
                "Unexpected (temporary) at stat => send http request: error sending request for url: tcp connect error: Connection refused (os error 111)"
            ),
            Some(ErrorKind::EndpointUnreachable)
        );
        assert_eq!(classify_text("something else"), None);
    }

    #[test]
    fn io_kinds() {
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            MoverError::classify("x", &e).kind,
            ErrorKind::PermissionDenied
        );
    }
}
