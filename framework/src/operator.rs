//! The operator: configuration, leader election, metrics endpoint, and the
//! run loop of all controllers.

use crate::controller::{Controller, Runnable};
use crate::error::Error;
use crate::leader::{LeaderElection, Lease};
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
    /// long is replaced.
    pub lease_duration: Duration,
    /// How often the leader renews and candidates retry (default 2 s).
    pub lease_renew_interval: Duration,
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
        }
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
        }
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
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> Result<(), Error> {
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut signal = Box::pin(signal);
        let result = match self.config.leader_election.clone() {
            None => {
                self.metrics.set_leader(true);
                let mut running = self.start(rt.clone(), stop_rx.clone());
                tokio::select! {
                    _ = &mut signal => {}
                    _ = wait_all(&mut running) => {}
                }
                info!("shutting down");
                let _ = stop_tx.send(true);
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

    fn start(&self, rt: Arc<Runtime>, stop: watch::Receiver<bool>) -> AbortOnDrop {
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
        let renew = self.config.lease_renew_interval;
        loop {
            // Standby replicas are ready (they serve /healthz and wait).
            self.metrics.set_unsynced(0);
            self.metrics.set_ready(true);
            // Candidate: wait for the lease.
            loop {
                match lease.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "leader election: lease request failed"),
                }
                tokio::select! {
                    _ = &mut *signal => return Ok(()),
                    _ = tokio::time::sleep(renew) => {}
                }
            }
            info!(identity = %lease.identity(), "became leader");
            self.metrics.set_leader(true);
            let (stop_tx, stop_rx) = watch::channel(false);
            let mut running = self.start(rt.clone(), stop_rx);
            let mut last_renew = tokio::time::Instant::now();
            let lost = loop {
                tokio::select! {
                    _ = &mut *signal => break false,
                    _ = tokio::time::sleep(renew) => {}
                }
                match lease.try_acquire_or_renew().await {
                    Ok(true) => last_renew = tokio::time::Instant::now(),
                    Ok(false) => break true,
                    Err(e) => {
                        warn!(error = %e, "leader election: renewing failed");
                        if last_renew.elapsed() > self.config.lease_duration {
                            break true;
                        }
                    }
                }
            };
            let _ = stop_tx.send(true);
            wait_all(&mut running).await;
            self.metrics.set_leader(false);
            if lost {
                warn!("lost the lease; stopped handling and standing by");
                continue;
            }
            info!("shutting down; releasing the lease");
            if let Err(e) = lease.release().await {
                warn!(error = %e, "releasing the lease failed");
            }
            return Ok(());
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
