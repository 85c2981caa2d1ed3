//! Leader election on a `coordination.k8s.io/v1` Lease.

use crate::error::Error;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease as KLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How long a leader may go without a successful renewal before it stops
/// acting: two thirds of the lease duration (client-go's 10 s of 15 s), so it
/// has stopped before a standby, which waits the whole lease duration from
/// its own observation of the last renewal, can take over.
pub(crate) fn renew_deadline(lease_duration: Duration) -> Duration {
    // Divided first: saturating for any duration.
    (lease_duration / 3).saturating_mul(2)
}

/// The timeout of one lease request: half the renew deadline, since one
/// attempt makes up to two requests, so a stalled request cannot keep a
/// leader acting past its renew deadline.
pub(crate) fn request_timeout(lease_duration: Duration) -> Duration {
    (renew_deadline(lease_duration) / 2).max(Duration::from_millis(100))
}

/// Where and as whom to hold the lease. Durations are in
/// [`OperatorConfig`](crate::OperatorConfig).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElection {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease object.
    pub lease_namespace: String,
    /// This replica's identity (e.g. the pod name); must differ per replica.
    pub identity: String,
}

impl LeaderElection {
    /// A lease configuration.
    pub fn new(
        lease_name: impl Into<String>,
        lease_namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaderElection {
            lease_name: lease_name.into(),
            lease_namespace: lease_namespace.into(),
            identity: identity.into(),
        }
    }
}

/// The client side of one lease.
///
/// A lease is held by `holderIdentity`; it expires when its record has not
/// changed for `leaseDurationSeconds` as observed by this replica's own
/// monotonic clock (as client-go does, so clock skew between replicas does not
/// matter). Releasing clears `holderIdentity`, so a standby takes over on its
/// next try instead of waiting for expiry.
pub(crate) struct Lease {
    api: Api<KLease>,
    cfg: LeaderElection,
    duration: Duration,
    request_timeout: Duration,
    observed: Option<(String, Instant)>,
}

fn record_of(l: &KLease) -> String {
    let s = l.spec.clone().unwrap_or_default();
    format!(
        "{:?}|{:?}|{:?}",
        s.holder_identity,
        s.renew_time.map(|t| t.0),
        s.lease_transitions
    )
}

impl Lease {
    pub(crate) fn new(client: Client, cfg: LeaderElection, duration: Duration) -> Lease {
        Lease {
            api: Api::namespaced(client, &cfg.lease_namespace),
            cfg,
            duration,
            request_timeout: request_timeout(duration),
            observed: None,
        }
    }

    /// Runs one lease request with the request timeout; the inner result is
    /// the API's answer, so callers can still tell a conflict apart.
    async fn timed<T>(
        &self,
        what: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, Error> {
        tokio::time::timeout(self.request_timeout, request)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "lease {what} did not answer within {:?}",
                    self.request_timeout
                ))
            })
    }

    pub(crate) fn identity(&self) -> &str {
        &self.cfg.identity
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Tries to become or stay the holder. `Ok(false)`: someone else holds it.
    pub(crate) async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let current = self
            .timed("get", self.api.get_opt(&self.cfg.lease_name))
            .await??;
        let Some(mut lease) = current else {
            let lease = KLease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.lease_name.clone()),
                    namespace: Some(self.cfg.lease_namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self
                .timed("create", self.api.create(&PostParams::default(), &lease))
                .await?
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = record_of(&lease);
        let now = Instant::now();
        let changed = self.observed.as_ref().is_none_or(|(r, _)| *r != record);
        if changed {
            self.observed = Some((record, now));
        }
        let observed_at = self.observed.as_ref().map(|(_, t)| *t).unwrap_or(now);
        let lease_dur = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.duration);
        let we_hold = holder == self.cfg.identity;
        let free = holder.is_empty() || now.duration_since(observed_at) > lease_dur;
        if !we_hold && !free {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!we_hold);
        let acquire = if we_hold {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(transitions, acquire));
        match self
            .timed(
                "renewal",
                self.api
                    .replace(&self.cfg.lease_name, &PostParams::default(), &lease),
            )
            .await?
        {
            Ok(l) => {
                self.observed = Some((record_of(&l), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up if we hold it.
    pub(crate) async fn release(&mut self) -> Result<(), Error> {
        if let Some(mut lease) = self
            .timed("get", self.api.get_opt(&self.cfg.lease_name))
            .await??
        {
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() == Some(self.cfg.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                lease.spec = Some(spec);
                self.timed(
                    "release",
                    self.api
                        .replace(&self.cfg.lease_name, &PostParams::default(), &lease),
                )
                .await??;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_renewal_ends_before_the_lease_expires() {
        let lease = Duration::from_secs(15);
        assert_eq!(renew_deadline(lease), Duration::from_secs(10));
        // One attempt = up to two requests, each bounded by the timeout.
        assert!(request_timeout(lease) * 2 <= renew_deadline(lease));
        assert!(renew_deadline(lease) < lease);
        let short = Duration::from_secs(3);
        assert!(request_timeout(short) * 2 <= renew_deadline(short));
        // No panic for any duration.
        assert!(renew_deadline(Duration::MAX) < Duration::MAX);
        assert!(request_timeout(Duration::MAX) > Duration::ZERO);
    }
}
