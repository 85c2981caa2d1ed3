//! A small kopf-style operator framework on top of kube-rs.
//!
//! You write plain async handler functions and mark them with attributes
//! ([`on_create`], [`on_update`], [`on_delete`], [`on_resume`], [`on_field`],
//! [`on_timer`], [`on_event`], [`daemon`]); the framework watches,
//! serialises work per object, retries with backoff, keeps progress on the
//! object, manages the finalizer, posts Events and conditions, and tracks
//! owned children; [`on_validate`] and [`on_mutate`] are admission
//! webhooks it serves over TLS. Handlers share operator data ([`Operator::data`]) and
//! read the controller's cache ([`Store`]) and indexes ([`Index`]); the
//! [`testing`] module runs operators in tests and builds contexts without
//! a cluster. The [`guide`] has one page per concept.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::{Api, Client, runtime::watcher};
//! use operator_framework::{
//!     Context, Controller, EventType, HandlerError, HandlerResult, Operator, OperatorConfig,
//!     on_create, on_delete, on_field,
//! };
//!
//! /// Runs once per ConfigMap labelled `demo=yes` when it is created (also
//! /// across restarts only once).
//! #[on_create(retries = 5, backoff_base = "1s", backoff_max = "1m", labels("demo=yes"))]
//! async fn created(ctx: Context<ConfigMap>) -> HandlerResult {
//!     let keys = ctx.object.data.as_ref().map(|d| d.len()).unwrap_or(0);
//!     if keys == 0 {
//!         // Retried later with exponential backoff.
//!         return Err(HandlerError::temporary("no data yet", None));
//!     }
//!     ctx.event(EventType::Normal, "Seen", &format!("{keys} keys")).await?;
//!     Ok(())
//! }
//!
//! /// Runs whenever `data.mode` changes (and on creation when it is set).
//! #[on_field(path = "data.mode", labels("demo=yes"))]
//! async fn mode_changed(ctx: Context<ConfigMap>) -> HandlerResult {
//!     tracing::info!(old = ?ctx.old_value(), new = ?ctx.new_value(), "mode changed");
//!     Ok(())
//! }
//!
//! /// The finalizer is put only on ConfigMaps labelled `demo=yes` (those this
//! /// delete handler matches), and removed again if the label goes.
//! #[on_delete(labels("demo=yes"))]
//! async fn deleted(ctx: Context<ConfigMap>) -> HandlerResult {
//!     tracing::info!(name = %ctx.name(), "cleaning up");
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     // Choose rustls' crypto provider before the first TLS connection.
//!     operator_framework::install_crypto_provider();
//!     let client = Client::try_default().await?;
//!     Operator::new(client.clone(), "demo.example.com")
//!         .config(OperatorConfig {
//!             metrics_addr: Some("127.0.0.1:8080".parse()?),
//!             ..Default::default()
//!         })
//!         .controller(
//!             Controller::new(Api::<ConfigMap>::all(client), watcher::Config::default())
//!                 .handler(created())
//!                 .handler(mode_changed())
//!                 .handler(deleted()),
//!         )
//!         .run() // until SIGTERM / SIGINT
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! # Registration
//!
//! Registration is explicit: each attribute turns
//! `async fn name(ctx: Context<K>) -> HandlerResult` into a function
//! `fn name() -> Handler<K>` (same visibility and docs; `K` comes from the
//! `Context<K>` parameter), and you pass it to [`Controller::handler`].
//! Handlers can also be built without macros with [`Handler::on_create`] and
//! friends. Options: `id` (default: the function name), `retries`,
//! `backoff_base`, `backoff_max`, `timeout` (per run), `labels(..)`,
//! `annotations(..)` (`key=value`, `key!=value`, `key`, `!key`) and
//! `when = predicate` (`fn(&K) -> bool`); `on_field` takes `path`, `on_timer`
//! `interval` and `initial_delay`.
//!
//! Invalid options are rejected: by the macros at compile time (a zero
//! `interval`, `backoff_base`, `backoff_max` or `timeout`, a base above the
//! cap, an empty `id` or `path`), by [`Handler::validate`] for handlers built
//! by hand. Handler ids must be unique per controller (they key the progress
//! records and the failure conditions). [`Controller::handler`] does not add
//! an invalid or duplicate handler and [`Operator::run`] then fails with
//! [`Error::Config`] before it watches anything; [`Controller::try_handler`]
//! returns the error at once.
//!
//! ```compile_fail
//! # use k8s_openapi::api::core::v1::ConfigMap;
//! # use operator_framework::{Context, HandlerResult, on_timer};
//! #[on_timer(interval = "0s")] // error: interval must be above zero
//! async fn tick(ctx: Context<ConfigMap>) -> HandlerResult {
//!     Ok(())
//! }
//! ```
//!
//! # How objects are processed
//!
//! * Every watch event, every change of an owned or watched child
//!   ([`Controller::owns`], [`Controller::watches`]) and every `resync`
//!   period enqueues the object. Events for one object coalesce; one object
//!   is never processed by two tasks at once; at most
//!   [`OperatorConfig::max_in_flight`] objects are processed at once.
//! * A processing cycle first decides about the finalizer
//!   (`<prefix>/finalizer`). It is wanted while at least one delete handler's
//!   filters (labels, annotations, `when`) match the object: it is added when
//!   an object starts matching (including at creation) and removed when it
//!   stops matching, without running any delete handler. An operator whose
//!   delete handlers match nothing puts no finalizer anywhere. Both changes
//!   are JSON patches that `test` the list first (the whole list when
//!   adding, the index of our entry when removing, as kube-runtime does), so
//!   unrelated concurrent changes do not make them fail and another
//!   controller's finalizer is never touched.
//! * Being deleted (a `deletionTimestamp`) with our finalizer: the delete
//!   handlers that match run; when all are done (succeeded or gave up, see
//!   below) the finalizer is removed. If none matches, it is removed at
//!   once.
//! * Otherwise one *cause* is handled, decided from the diff base (the
//!   `<prefix>/last-handled-configuration` annotation):
//!   **create** when there is none, **resume** once per process for an
//!   object handled before it started (when resume handlers exist; not
//!   after a create in this process), **update** when the essence
//!   (everything but `metadata`, `status`, `apiVersion` and `kind`) differs
//!   from it. Create runs the matching create handlers and the field
//!   handlers whose field is set; update the matching update handlers and
//!   the field handlers whose field changed. As in kopf, an object is
//!   handled when the filters of at least one create, update, resume or
//!   field handler match it (whatever the cause), and then the diff base is
//!   stored when the cause is done even if none of the cause's handlers
//!   matched: an operator with only update or field handlers, or with a
//!   filtered create handler and an unfiltered update handler, sees every
//!   change. An object that no such handler's filters match is not written
//!   to at all; if it starts matching later without a diff base, that is
//!   its create. (The essence has no metadata: a label change alone is no
//!   update.)
//! * **The diff base is bounded.** It holds the essence as JSON while that
//!   is at most 64 KiB; larger essences, every Secret (so that `data` never
//!   lands in an annotation in clear) and the kinds of controllers built with
//!   [`Controller::digest_diff_base`] get `sha256:<digest>` instead, plus
//!   one digest per field-handler path. A change is detected either way, and
//!   field handlers still fire only when their field changed, but with a
//!   digest the old values are unknown: update and field handlers run with
//!   an empty [`Context::diff`], `old_value()` `None`, and
//!   [`Context::diff_known`] `false`.
//! * Handlers of a cause run in registration order. Their outcomes are kept
//!   in the `<prefix>/progress` annotation (see [`progress`]) while any is
//!   unfinished, so a restarted operator neither reruns finished handlers
//!   nor forgets a pending backoff. **One patch per cycle**: the progress
//!   and the diff base are written together at the end of the cycle (when
//!   all are done, the progress annotation is removed and the diff base
//!   stored); adding or removing the finalizer is a cycle of its own. If
//!   that write fails, the outcome is kept in memory (per object uid) and
//!   written by the next cycles, so a handler that finished does not run
//!   again in this process; after a crash before the write, it may (at
//!   least once, as in kopf).
//! * **Leaving the watch's selection is not a deletion.** An object that no
//!   longer matches the controller's label or field selectors is dropped
//!   from the cache; if it still exists, event handlers do not see a
//!   `Deleted`, no delete handler runs, and our finalizer is removed (the
//!   object is out of the operator's scope, nothing would remove it later).
//!   Telling the two apart takes one GET, made only when the controller has
//!   event handlers or the object carried our finalizer.
//! * The cache of watched objects drops `metadata.managedFields` (so
//!   `ctx.object` has none) and applies a (re)list at once: objects missing
//!   from it are treated as departed (see above).
//! * What is remembered about an object in memory (resume done, timers,
//!   event-handler backoff, unsaved outcomes) belongs to its uid: an object
//!   deleted and recreated under the same name starts afresh.
//! * Event handlers ([`on_event`]) are level-triggered: they run on every
//!   cycle of an existing object that is not being deleted — after watch
//!   events (including those caused by the operator's own writes), changes
//!   of owned/watched children, and each resync — with
//!   [`Context::watch_event`] `Some(`[`WatchEventType::Applied`]`)`, so they
//!   must be idempotent and should write only what differs (as
//!   [`Context::patch_status`] does by itself). They keep no progress on the
//!   object; failures are retried with the handler's backoff (kept in memory;
//!   reset early when the object's `generation` changes). When the object
//!   has been deleted from the API (after its finalizers), they run once more
//!   with `Some(`[`WatchEventType::Deleted`]`)` and the last known version of
//!   the object; that run is not retried (the object is gone).
//!
//!   Compared with kopf's `@kopf.on.event`, which receives each raw watch
//!   event with its type (`ADDED`, `MODIFIED`, `DELETED`, or none for the
//!   initial listing) exactly as it arrives: here events of one object
//!   coalesce, `Applied` does not tell added from modified and also fires for
//!   child changes and resyncs, nothing runs while the object carries a
//!   `deletionTimestamp` (delete handlers do), and `Deleted` is seen only by
//!   an operator that is running (and leading) when the deletion is
//!   observed; objects that do not deserialise are skipped.
//!
//!   ```
//!   use k8s_openapi::api::core::v1::ConfigMap;
//!   use operator_framework::{Context, HandlerResult, WatchEventType, on_event};
//!
//!   #[on_event(backoff_base = "1s")]
//!   async fn observed(ctx: Context<ConfigMap>) -> HandlerResult {
//!       match ctx.watch_event {
//!           Some(WatchEventType::Deleted) => tracing::info!(name = %ctx.name(), "gone"),
//!           _ => tracing::info!(name = %ctx.name(), "exists"),
//!       }
//!       Ok(())
//!   }
//!   # let _ = observed();
//!   ```
//! * Timers ([`on_timer`]) run every `interval` (after `initial_delay` from
//!   the first sight of the object in this process) while the object exists
//!   and is not being deleted; they stop when it is gone. A failed run is
//!   retried with the handler's backoff (`backoff_base * 2^n`, capped at
//!   `backoff_max`, counted per object and timer in memory), or after the
//!   delay of a [`HandlerError::temporary`] that names one; after a success
//!   the count resets and the `interval` applies again. A permanent error (or
//!   more than `retries` failed runs in a row) stops that timer for that
//!   object until the object's essence (its spec) changes; then it starts
//!   over after `initial_delay`.
//! * Nothing is written when nothing changed: a resync of a handled object
//!   makes no write requests (unless your event handlers write).
//!
//! # Errors, retries and give-up policy
//!
//! `Ok(())` finishes a handler. [`HandlerError::temporary`] retries after the
//! given delay (or the backoff); [`HandlerError::permanent`] stops; any other
//! error (`?` on any `std::error::Error` or `anyhow::Error`), a panic, or a
//! timeout retries with exponential backoff with jitter
//! ([`backoff::Backoff`]: `base * 2^n`, capped at `max`), counted per object
//! and handler, reset when the handler succeeds. After `retries` retries the
//! handler gives up (counts as a permanent failure). Every failure is logged,
//! posted as a Warning Event (`HandlerFailed`, or `HandlerGaveUp` when final)
//! and shown in `.status.conditions` as the handler's own condition
//! [`handler_failed_condition`]`(id)`, `HandlerFailed.<Id in CamelCase>`
//! (e.g. `HandlerFailed.CopyData` for `copy-data`): `True` with reason
//! `Retrying` or `GaveUp` and a message with the retry count and error,
//! turned `False` (reason `Succeeded`) when that handler later succeeds.
//! One handler's success never clears another's failure. Conditions are a
//! read-modify-write guarded by the resourceVersion and need a status
//! subresource.
//!
//! **Every run has a time limit**: a handler's `timeout`, else
//! [`OperatorConfig::handler_timeout`] (default 10 minutes; `None` for
//! none). A timed-out run is cancelled and is a failed, retryable run, so a
//! hung handler cannot hold a worker slot forever. Any duration is accepted
//! up to `Duration::MAX` (delays, intervals, timeouts, backoffs): arithmetic
//! saturates, so `HandlerError::temporary(.., Some(Duration::MAX))` means
//! "not again in this life", not a panic.
//!
//! **Deletion cannot be blocked forever**: delete handlers without an explicit
//! `retries` give up after [`OperatorConfig::delete_retries`] (default 10)
//! failed runs; a delete handler that failed permanently or gave up gets a
//! `HandlerGaveUp` Warning Event and the finalizer is removed anyway.
//!
//! Objects that cannot be deserialised into `K` get the condition
//! `InvalidObject=True` (reason `DeserializationFailed`, message naming the
//! field and the reason) and a Warning Event (reason `InvalidObject`); they
//! are skipped until fixed, while all other objects are served.
//!
//! **An invalid object can still be deleted**: when an object that cannot be
//! deserialised is being deleted and carries the finalizer, its delete
//! handlers are skipped (they cannot run without a typed object), the
//! finalizer is removed anyway, and a Warning Event (reason
//! `InvalidObjectDeleted`, [`INVALID_OBJECT_DELETED`]) and an error log line
//! say that the delete handlers were skipped and why. Fix the object before
//! deleting it if its delete handlers must run.
//!
//! # Observability
//!
//! Every log line of a processing cycle is inside a `tracing` span `object`
//! with `kind` and `key` (`namespace/name`), and handler lines inside a span
//! `handler` with `id`, `cause` and `retry`. [`OperatorConfig::metrics_addr`]
//! serves Prometheus `/metrics` (see [`Metrics`]), `/healthz` and `/readyz`.
//!
//! # Leader election
//!
//! With [`OperatorConfig::leader_election`] only the replica holding the
//! `coordination.k8s.io/v1` Lease runs controllers; on graceful shutdown the
//! leader keeps renewing while its in-flight handlers finish, then releases
//! the lease so a standby takes over immediately, otherwise after
//! [`OperatorConfig::lease_duration`].
//!
//! A leader that loses the lease (another replica holds it, or no renewal
//! succeeded within the renew deadline, two thirds of the lease duration)
//! stops at once: its in-flight handlers are cancelled rather than given
//! `shutdown_timeout`, because another replica may already act on the same
//! objects; nothing of a cancelled run is recorded, so the new leader runs
//! it again. Every lease request has a timeout (a third of the lease
//! duration), so a stalled renewal cannot outlast the lease. Then it stands
//! by as a candidate.
//!
//! # RBAC
//!
//! The operator needs get/list/watch/patch on its kinds and their `/status`,
//! create/patch on `events.k8s.io` events, get/create/update on
//! `coordination.k8s.io` leases (with leader election), and whatever the
//! children helpers touch (get/list/watch/patch/delete).

#![warn(missing_docs)]

pub mod backoff;
pub mod conditions;
mod context;
mod controller;
mod data;
pub mod diff;
mod error;
mod filters;
mod handler;
mod health;
mod hooks;
mod index;
mod leader;
mod metrics;
mod operator;
pub mod progress;
mod runtime;
mod store;
pub mod testing;
mod time;
mod tls;
mod webhook;

/// Guide pages, one per concept (also in `framework/docs/`); their examples
/// are compiled and run as doctests.
pub mod guide {
    #[doc = include_str!("../docs/handlers.md")]
    pub mod handlers {}
    #[doc = include_str!("../docs/filters.md")]
    pub mod filters {}
    #[doc = include_str!("../docs/finalizers.md")]
    pub mod finalizers {}
    #[doc = include_str!("../docs/progress-retries.md")]
    pub mod progress_retries {}
    #[doc = include_str!("../docs/data-indexes.md")]
    pub mod data_indexes {}
    #[doc = include_str!("../docs/daemons.md")]
    pub mod daemons {}
    #[doc = include_str!("../docs/hooks-probes.md")]
    pub mod hooks_probes {}
    #[doc = include_str!("../docs/testing.md")]
    pub mod testing {}
    #[doc = include_str!("../docs/webhooks.md")]
    pub mod webhooks {}
}

pub use context::{ChildrenReport, Context, EventType};
pub use controller::{
    Controller, HANDLER_FAILED, INVALID_OBJECT, INVALID_OBJECT_DELETED, handler_failed_condition,
};
pub use diff::{DiffItem, DiffOp};
pub use error::{Error, HandlerError, HandlerResult};
pub use handler::{Cause, Handler, HandlerKind, MetaFilter, WatchEventType};
pub use hooks::HookContext;
pub use index::Index;
pub use leader::LeaderElection;
pub use metrics::{Histogram, Metrics, escape_label_value};
pub use operator::{Operator, OperatorConfig, shutdown_signal};
pub use store::Store;
pub use tls::install_crypto_provider;
pub use webhook::{AdmissionRequest, Mutation, Operation, Validation, Webhook, WebhookConfig};

pub use operator_framework_macros::{
    daemon, on_create, on_delete, on_event, on_field, on_mutate, on_resume, on_timer, on_update,
    on_validate,
};

/// Re-exports for code generated by the macros and for users.
pub use kube;
pub use kube::runtime::reflector::ObjectRef;
