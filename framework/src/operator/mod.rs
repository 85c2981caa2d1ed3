//! The operator: configuration, leader election, metrics endpoint, and the
//! run loop of all controllers.

mod lease;

use crate::controller::{Controller, RunState, Runnable};
use crate::data::DataMap;
use crate::error::Error;
use crate::hooks::{self, Hook, HookContext};
use crate::leader::LeaderElection;
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
    /// Where the admission webhooks of the controllers
    /// ([`Controller::validate`], [`Controller::mutate`]) are served
    /// (default none: an operator with webhooks then fails to start).
    pub webhooks: Option<crate::WebhookConfig>,
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
            webhooks: None,
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
    startup: Vec<Hook>,
    cleanup: Vec<Hook>,
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
            startup: Vec::new(),
            cleanup: Vec::new(),
        }
    }

    /// Adds a startup hook: run (in registration order) by
    /// [`Operator::run_until`] once per process, after the configuration is
    /// checked and before the metrics endpoint, leader election and any
    /// watch start (e.g. to check prerequisites or fill operator data). The
    /// first failing hook stops the start: `run` returns [`Error::Hook`].
    /// No time limit.
    pub fn on_startup<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HookContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.startup.push(Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// Adds a cleanup hook: run (in registration order) once when `run`
    /// ends after a start (shutdown signal), after every controller has
    /// stopped and the lease is released. All cleanup hooks together get
    /// [`OperatorConfig::shutdown_timeout`]; failures are logged, not
    /// returned. Not run after a crash or when the `run` future is dropped.
    pub fn on_cleanup<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HookContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.cleanup.push(Arc::new(move |ctx| Box::pin(f(ctx))));
        self
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
        let data = Arc::new(self.data.clone());
        let hook_ctx = hooks::context(self.client.clone(), data.clone());
        hooks::startup(&self.startup, &hook_ctx).await?;
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
            data,
        ));
        let _webhooks = self.start_webhooks(&rt).await?;
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
        self.metrics.set_ready(false);
        self.metrics.set_leader(false);
        hooks::cleanup(&self.cleanup, &hook_ctx, self.config.shutdown_timeout).await;
        drop(server);
        result
    }

    /// Starts the webhook server (a fresh self-signed certificate) and
    /// applies the webhook configurations with it as CA bundle.
    async fn start_webhooks(&self, rt: &Runtime) -> Result<Option<AbortOnDrop>, Error> {
        let routes: Vec<_> = self.controllers.iter().flat_map(|c| c.webhooks()).collect();
        let Some(cfg) = &self.config.webhooks else {
            if routes.is_empty() {
                return Ok(None);
            }
            return Err(Error::Config(
                "controllers have admission webhooks but OperatorConfig::webhooks is not set"
                    .into(),
            ));
        };
        let (pem, der, key) = crate::webhook::self_signed(&cfg.url)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        info!(listen = %cfg.listen, url = %cfg.url, webhooks = routes.len(), "serving admission webhooks");
        let data = rt.data.clone();
        let served = routes.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = crate::webhook::serve(listener, der, key, served, data).await {
                warn!(error = %e, "webhook server failed");
            }
        });
        let guard = AbortOnDrop(vec![task]);
        crate::webhook::apply_configurations(
            &self.client,
            cfg,
            &routes,
            &self.prefix,
            &rt.field_manager,
            &pem,
        )
        .await?;
        Ok(Some(guard))
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
