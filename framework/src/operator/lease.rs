//! Running the controllers under leader election: acquire, renew within
//! the renew deadline, stand by after losing the lease, release on
//! shutdown.

use super::{Operator, wait_all};
use crate::controller::RunState;
use crate::error::Error;
use crate::leader::{LeaderElection, Lease, renew_deadline};
use crate::runtime::Runtime;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

impl Operator {
    pub(super) async fn run_with_lease(
        &self,
        rt: Arc<Runtime>,
        le: LeaderElection,
        signal: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), Error> {
        let mut lease = Lease::new(self.client.clone(), le, self.config.lease_duration);
        let deadline = renew_deadline(self.config.lease_duration);
        let mut renew = self.config.lease_renew_interval;
        if renew > deadline / 2 {
            // Else one slow attempt would already miss the deadline.
            warn!(
                ?renew,
                ?deadline,
                "lease_renew_interval is too long for lease_duration; renewing every half renew deadline"
            );
            renew = deadline / 2;
        }
        loop {
            // Standby replicas are ready (they serve /healthz and wait).
            self.metrics.set_unsynced(0);
            self.metrics.set_ready(true);
            // Candidate: wait for the lease. The deadline counts from before
            // the winning request: the server wrote the lease after that, so
            // a standby's wait for its expiry ends after our deadline.
            let mut last_renew = loop {
                let attempt = Instant::now();
                match lease.try_acquire_or_renew().await {
                    Ok(true) => break attempt,
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "leader election: lease request failed"),
                }
                tokio::select! {
                    _ = &mut *signal => return Ok(()),
                    _ = tokio::time::sleep(renew) => {}
                }
            };
            info!(identity = %lease.identity(), "became leader");
            self.metrics.set_leader(true);
            let (stop_tx, stop_rx) = watch::channel(RunState::Run);
            let mut running = self.start(rt.clone(), stop_rx);
            let lost = loop {
                tokio::select! {
                    _ = &mut *signal => break false,
                    _ = tokio::time::sleep_until(next_renewal(last_renew, renew, deadline)) => {}
                }
                if !renew_before_deadline(&mut lease, &mut last_renew, deadline).await {
                    break true;
                }
            };
            if lost {
                // Another replica may act already: cancel, do not drain.
                self.metrics.set_leader(false);
                let _ = stop_tx.send(RunState::Cancel);
                wait_all(&mut running).await;
                warn!("lost the lease; cancelled in-flight handlers and standing by");
                continue;
            }
            // Graceful shutdown: in-flight handlers may finish, but only while
            // the lease is still ours; keep renewing it meanwhile.
            info!("shutting down; draining in-flight handlers");
            let _ = stop_tx.send(RunState::Drain);
            let mut renewing = true;
            loop {
                tokio::select! {
                    _ = wait_all(&mut running) => break,
                    _ = tokio::time::sleep_until(next_renewal(last_renew, renew, deadline)), if renewing => {
                        if !renew_before_deadline(&mut lease, &mut last_renew, deadline).await {
                            warn!("lost the lease while shutting down; cancelling in-flight handlers");
                            self.metrics.set_leader(false);
                            let _ = stop_tx.send(RunState::Cancel);
                            renewing = false;
                        }
                    }
                }
            }
            self.metrics.set_leader(false);
            info!("releasing the lease");
            if let Err(e) = lease.release().await {
                warn!(error = %e, "releasing the lease failed");
            }
            return Ok(());
        }
    }
}

/// When a leader tries to renew next: after `renew`, but never later than
/// its renew deadline, so that failing attempts notice the deadline in time.
fn next_renewal(last_renew: Instant, renew: Duration, deadline: Duration) -> Instant {
    crate::time::from_now(renew).min(crate::time::after(last_renew, deadline))
}

/// One renewal attempt of a leader, bounded by its renew deadline. `false`:
/// the lease is lost (someone else holds it, or no renewal succeeded within
/// the deadline) and the leader must stop acting.
async fn renew_before_deadline(
    lease: &mut Lease,
    last_renew: &mut Instant,
    deadline: Duration,
) -> bool {
    let started = Instant::now();
    let until = crate::time::after(*last_renew, deadline);
    match tokio::time::timeout_at(until, lease.try_acquire_or_renew()).await {
        Ok(Ok(true)) => {
            *last_renew = started;
            true
        }
        Ok(Ok(false)) => {
            warn!("leader election: another replica holds the lease");
            false
        }
        Ok(Err(e)) => {
            warn!(error = %e, "leader election: renewing failed");
            Instant::now() < until
        }
        Err(_) => {
            warn!(
                ?deadline,
                "leader election: no renewal within the renew deadline"
            );
            false
        }
    }
}
