//! Handler outcomes and framework errors.

use std::fmt;
use std::time::Duration;

/// What a handler returns: `Ok(())` on success, or a [`HandlerError`].
pub type HandlerResult = Result<(), HandlerError>;

/// Why a handler run did not succeed.
///
/// * [`HandlerError::temporary`]: retry later, after the given delay or after
///   the handler's exponential backoff.
/// * [`HandlerError::permanent`]: do not retry; the failure is recorded on the
///   object (condition + Warning Event) and the handler counts as done.
/// * Any other error converted with `?` (every `std::error::Error + Send + Sync`
///   and `anyhow::Error`) is retried with exponential backoff with jitter.
///
/// `HandlerError` deliberately does not implement `std::error::Error`, so that
/// the blanket `From` conversion for `?` is possible (the same trick as `anyhow`).
pub enum HandlerError {
    /// Retry later. `delay: None` uses the handler's backoff schedule.
    Temporary {
        /// Human-readable reason, recorded on the object.
        message: String,
        /// Explicit delay before the next attempt.
        delay: Option<Duration>,
    },
    /// Do not retry.
    Permanent {
        /// Human-readable reason, recorded on the object.
        message: String,
    },
    /// Any other error: retried with backoff.
    Other(anyhow::Error),
}

impl HandlerError {
    /// A temporary error: the handler is retried after `delay`, or after its
    /// exponential backoff when `delay` is `None`.
    pub fn temporary(message: impl Into<String>, delay: Option<Duration>) -> Self {
        HandlerError::Temporary {
            message: message.into(),
            delay,
        }
    }

    /// A permanent error: the handler is not retried.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            message: message.into(),
        }
    }

    /// The human-readable message of this error (for `Other`, the whole
    /// `anyhow` chain joined with `: `).
    pub fn message(&self) -> String {
        match self {
            HandlerError::Temporary { message, .. } | HandlerError::Permanent { message } => {
                message.clone()
            }
            HandlerError::Other(e) => format!("{e:#}"),
        }
    }

    /// Whether this error stops retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(self, HandlerError::Permanent { .. })
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Temporary { message, delay } => f
                .debug_struct("Temporary")
                .field("message", message)
                .field("delay", delay)
                .finish(),
            HandlerError::Permanent { message } => f
                .debug_struct("Permanent")
                .field("message", message)
                .finish(),
            HandlerError::Other(e) => f.debug_tuple("Other").field(e).finish(),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Temporary { message, .. } => write!(f, "temporary error: {message}"),
            HandlerError::Permanent { message } => write!(f, "permanent error: {message}"),
            HandlerError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        HandlerError::Other(e.into())
    }
}

/// Errors of the framework itself (API calls, (de)serialisation, configuration).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// JSON (de)serialisation failed.
    #[error("serialization error: {0}")]
    Json(#[from] serde_json::Error),
    /// A watch stream failed.
    #[error("watch error: {0}")]
    Watch(#[from] kube::runtime::watcher::Error),
    /// Invalid configuration or arguments.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding or serving the metrics/health endpoint failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A request did not answer in time (e.g. a lease renewal).
    #[error("timeout: {0}")]
    Timeout(String),
    /// A startup hook failed ([`Operator::on_startup`](crate::Operator::on_startup)).
    #[error("hook failed: {0}")]
    Hook(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> HandlerResult {
        let _n: u32 = s.parse()?;
        Ok(())
    }

    fn any() -> HandlerResult {
        Err(anyhow::anyhow!("boom"))?;
        Ok(())
    }

    #[test]
    fn question_mark_converts() {
        assert!(parse("1").is_ok());
        let e = parse("x").unwrap_err();
        assert!(!e.is_permanent());
        assert!(e.message().contains("invalid digit"));
        assert_eq!(any().unwrap_err().message(), "boom");
        assert!(HandlerError::permanent("p").is_permanent());
        assert_eq!(
            HandlerError::temporary("t", Some(Duration::from_secs(1))).message(),
            "t"
        );
    }
}
