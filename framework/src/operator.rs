//! The operator: configuration, leader election, metrics endpoint, and the
//! run loop of all controllers.

use crate::controller::{Controller, RunState, Runnable};
use crate::data::DataMap;
use crate::error::Error;
use crate::leader::{LeaderElection, Lease, renew_deadline};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// Operator-wide settings. Construct with struct update syntax:
/// `OperatorConfig { max_in_flight: 8, ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Maximum number of objects processed at the same time, over all
    /// controllers (default 16).
    pub max_in_flight: usize,
    /// Address of the `/metrics`, `/healthz`, `/readyz` endpoint (default none).
    pub metrics_addr: Option<SocketAddr>,
    /// Leader election on a Lease (default none: this replica always acts).
    pub leader_election: Option<LeaderElection>,
    /// Every object is re-processed this often (event handlers run again;
    /// nothing is written when nothing changed). Zero disables. Default 5 min.
    pub resync: Duration,
    /// How long in-flight handlers may run after SIGTERM before they are
    /// cancelled (default 30 s).
    pub shutdown_timeout: Duration,
    /// Delete handlers without an explicit `retries` give up after this many
    /// failed runs (default 10); then a `HandlerGaveUp` Warning Event is posted
    /// and the finalizer is removed anyway, so that a broken delete handler
    /// cannot block deletion forever.
    pub delete_retries: u32,
    /// Field manager for server-side apply and name of the Event reporter
    /// (default: the prefix).
    pub field_manager: Option<String>,
    /// Lease duration (default 15 s): a leader that has not renewed for this
    /// long is replaced. The leader itself stops acting (and cancels its
    /// in-flight handlers at once) when it could not renew for two thirds of
    /// it (the renew deadline), so that it has stopped before another replica
    /// can take over; each lease request times out after a third of it.
    pub lease_duration: Duration,
    /// How often the leader renews and candidates retry (default 2 s); at
    /// most half the renew deadline is used.
    pub lease_renew_interval: Duration,
    /// The time limit of one handler run for handlers without their own
    /// `timeout` (default 10 minutes; `None`: no limit). A run that takes
    /// longer is cancelled and counts as a failed, retryable run, so a hung
    /// handler cannot hold one of the `max_in_flight` slots forever.
    pub handler_timeout: Option<Duration>,
    /// `/healthz` fails ([`Metrics::is_healthy`]) when a running
    /// controller's watch has not applied its initial list, or has been
    /// failing without interruption, for longer than this (default 2
    /// minutes), so that a liveness probe restarts a replica whose watches
    /// are stuck (e.g. RBAC revoked, API server unreachable).
    pub unhealthy_after: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            max_in_flight: 16,
            metrics_addr: None,
            leader_election: None,
            resync: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(30),
            delete_retries: 10,
            field_manager: None,
            lease_duration: Duration::from_secs(15),
            lease_renew_interval: Duration::from_secs(2),
            handler_timeout: Some(Duration::from_secs(600)),
            unhealthy_after: Duration::from_secs(120),
        }
    }
}

impl OperatorConfig {
    /// Rejects settings that cannot work: a zero handler timeout, and with
    /// leader election a zero lease duration or renew interval (a busy loop).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.handler_timeout.is_some_and(|t| t.is_zero()) {
            return bad("handler_timeout is zero (use None for no limit)");
        }
        if self.leader_election.is_some() {
            if self.lease_duration.is_zero() {
                return bad("lease_duration is zero");
            }
            if self.lease_renew_interval.is_zero() {
                return bad("lease_renew_interval is zero");
            }
        }
        Ok(())
    }
}

/// An operator: a set of [`Controller`]s sharing a client, a prefix, a
/// worker limit, metrics and (optionally) leader election.
pub struct Operator {
    client: Client,
    prefix: String,
    config: OperatorConfig,
    controllers: Vec<Arc<dyn Runnable>>,
    metrics: Arc<Metrics>,
    data: DataMap,
}

impl Operator {
    /// A new operator. `prefix` (a DNS subdomain such as `example.com`)
    /// prefixes its annotations (`<prefix>/progress`,
    /// `<prefix>/last-handled-configuration`), its finalizer
    /// (`<prefix>/finalizer`), the owner labels of adopted children, and is the
    /// default field manager.
    pub fn new(client: Client, prefix: impl Into<String>) -> Self {
        Operator {
            client,
            prefix: prefix.into(),
            config: OperatorConfig::default(),
            controllers: Vec::new(),
            metrics: Arc::new(Metrics::default()),
            data: DataMap::default(),
        }
    }

    /// Registers operator-wide data: handlers read it with
    /// [`Context::data::<T>()`](crate::Context::data), which returns this
    /// `Arc` (one value per type `T`; registering a second `T` replaces
    /// the first). Instead of process globals: settings, clients of other
    /// services, metrics, caches. Keep a clone of the `Arc` to reach the
    /// same value outside handlers (e.g. in a metrics collector).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use operator_framework::{Context, HandlerResult, Operator};
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// struct Settings { image: String }
    ///
    /// async fn created(ctx: Context<ConfigMap>) -> HandlerResult {
    ///     let settings = ctx.data::<Settings>()?;
    ///     tracing::info!(image = %settings.image, "creating");
    ///     Ok(())
    /// }
    /// # fn demo(client: kube::Client) -> Operator {
    /// Operator::new(client, "example.com").data(Arc::new(Settings { image: "busybox".into() }))
    /// # }
    /// ```
    pub fn data<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.data.insert(value);
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: OperatorConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a controller.
    pub fn controller<K>(mut self, controller: Controller<K>) -> Self
    where
        K: Resource<DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
        K::Scope: 'static,
    {
        self.controllers.push(Arc::new(controller));
        self
    }

    /// The operator's metrics (also served on `metrics_addr`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `signal` completes, then shuts down gracefully: no new
    /// handler runs start, in-flight ones get `shutdown_timeout` to finish,
    /// and a held lease is released so another replica takes over at once.
    ///
    /// Returns [`Error::Config`] at once, before watching anything, when the
    /// configuration is invalid ([`OperatorConfig::validate`]) or a
    /// controller rejected a handler (invalid options, duplicate ids).
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> Result<(), Error> {
        self.config.validate()?;
        self.metrics
            .health
            .set_threshold(self.config.unhealthy_after);
        let problems: Vec<String> = self.controllers.iter().flat_map(|c| c.problems()).collect();
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        let identity = self
            .config
            .leader_election
            .as_ref()
            .map(|l| l.identity.clone());
        let rt = Arc::new(Runtime::new(
            self.client.clone(),
            self.prefix.clone(),
            self.config.clone(),
            self.metrics.clone(),
            identity,
            Arc::new(self.data.clone()),
        ));
        let server = match self.config.metrics_addr {
            Some(addr) => {
                let listener_metrics = self.metrics.clone();
                // Bind eagerly so that a bad address is an error of `run`.
                let probe = tokio::net::TcpListener::bind(addr).await?;
                drop(probe);
                Some(AbortOnDrop(vec![tokio::spawn(async move {
                    if let Err(e) = crate::metrics::serve(addr, listener_metrics).await {
                        warn!(error = %e, "metrics endpoint failed");
                    }
                })]))
            }
            None => None,
        };
        let mut signal = Box::pin(signal);
        let result = match self.config.leader_election.clone() {
            None => {
                let (stop_tx, stop_rx) = watch::channel(RunState::Run);
                self.metrics.set_leader(true);
                let mut running = self.start(rt.clone(), stop_rx);
                tokio::select! {
                    _ = &mut signal => {}
                    _ = wait_all(&mut running) => {}
                }
                info!("shutting down");
                let _ = stop_tx.send(RunState::Drain);
                wait_all(&mut running).await;
                Ok(())
            }
            Some(le) => self.run_with_lease(rt, le, &mut signal).await,
        };
        drop(server);
        self.metrics.set_ready(false);
        self.metrics.set_leader(false);
        result
    }

    fn start(&self, rt: Arc<Runtime>, stop: watch::Receiver<RunState>) -> AbortOnDrop {
        self.metrics.set_unsynced(self.controllers.len());
        let handles: Vec<_> = self
            .controllers
            .iter()
            .map(|c| tokio::spawn(c.run(rt.clone(), stop.clone())))
            .collect();
        self.metrics.set_ready(true);
        AbortOnDrop(handles)
    }

    async fn run_with_lease(
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

/// Spawned tasks that are aborted when this is dropped (e.g. when the
/// operator's `run` future is dropped), so no controller outlives its operator.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

async fn wait_all(tasks: &mut AbortOnDrop) {
    let handles = &mut tasks.0;
    // Remove each handle right after it completed: a JoinHandle must not be
    // polled again after it returned (this future may be dropped mid-way).
    while let Some(h) = handles.first_mut() {
        let _ = h.await;
        handles.remove(0);
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    info!("shutdown signal received");
}
