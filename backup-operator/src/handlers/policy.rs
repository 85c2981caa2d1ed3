//! BackupPolicy handlers: one level-triggered reconcile plus small reactions.

use super::{blocked, copy_runs, movers, observe, settings};
use crate::api::{BackupMethod, BackupPolicy, BackupPolicyStatus, RUN_NOW_ANNOTATION};
use crate::schedule::Schedule;
use crate::status::{self, Observation};
use crate::{desired, targets};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use operator_framework::{
    Context, EventType, HandlerError, HandlerResult, conditions, on_event, on_field, on_timer,
};

/// Brings CronJobs and status in line with the spec and the finished Jobs.
///
/// Runs on every change of the policy, of its CronJobs and Jobs, of PVCs in
/// its namespace, and on the periodic resync. Writes nothing when nothing
/// changed.
#[on_event(
    id = "reconcile",
    backoff_base = "2s",
    backoff_max = "5m",
    timeout = "120s"
)]
pub async fn reconcile(ctx: Context<BackupPolicy>) -> HandlerResult {
    reconcile_policy(ctx).await
}

/// `Snapshot` and `SnapshotThenCopy` policies run no CronJob: the operator
/// looks every 15 s whether a run is due (and, while snapshots are pending,
/// whether they are ready).
#[on_timer(id = "snapshot-tick", interval = "15s", initial_delay = "5s")]
pub async fn snapshot_tick(ctx: Context<BackupPolicy>) -> HandlerResult {
    if ctx.object.spec.method == BackupMethod::Copy {
        return Ok(());
    }
    reconcile_policy(ctx).await
}

/// Lists the repositories when the periodic catalog round is due (the
/// reconcile also starts one on creation and after every backup).
#[on_timer(id = "catalog-tick", interval = "60s", initial_delay = "30s")]
pub async fn catalog_tick(ctx: Context<BackupPolicy>) -> HandlerResult {
    if ctx.object.spec.destination.is_none() {
        return Ok(());
    }
    let status = ctx.object.status.clone().unwrap_or_default();
    let due = crate::catalog::job::due(
        &status,
        &[],
        jiff::Timestamp::now(),
        settings(&ctx).catalog_interval,
    );
    if due.is_none() {
        return Ok(());
    }
    reconcile_policy(ctx).await
}

/// A stuck pod (forbidden, unschedulable, no image, no Secret, no mount)
/// changes no Job: policies with running Jobs are looked at every 15 s so
/// the problem shows within a minute, not at the Job's deadline.
#[on_timer(id = "job-tick", interval = "15s", initial_delay = "10s")]
pub async fn job_tick(ctx: Context<BackupPolicy>) -> HandlerResult {
    let ns = ctx.object.namespace().unwrap_or_default();
    if !blocked::has_running(&ns, &ctx.object.name_any()) {
        return Ok(());
    }
    reconcile_policy(ctx).await
}

/// A snapshot step whose API call failed is retried; errors the user or the
/// cluster admin must fix are reported in the status instead.
fn retry_if_transient<T>(r: &Result<T, crate::snapshot::SnapshotError>) -> HandlerResult {
    match r {
        Err(e) if e.is_transient() => Err(HandlerError::temporary(e.to_string(), None)),
        _ => Ok(()),
    }
}

async fn reconcile_policy(ctx: Context<BackupPolicy>) -> HandlerResult {
    let policy = ctx.object.clone();
    let name = policy.name_any();
    let ns = policy.namespace().unwrap_or_default();
    let client = ctx.client();
    if policy.metadata.deletion_timestamp.is_some() {
        if let Some(m) = super::backup_metrics(&ctx) {
            m.forget(&ns, &name);
        }
        return Ok(());
    }

    let schedule = Schedule::parse(&policy.spec.schedule, policy.spec.time_zone.as_deref());
    let pvcs = observe::pvcs(&client, &ns).await?;
    let resolution = targets::resolve(&policy.spec.targets, &pvcs);
    let missing_secrets = observe::missing_secrets(&client, &policy, &ns).await?;
    let not_allowed = crate::guardrails::violations(
        &policy.spec,
        &settings(&ctx).mover_image,
        &settings(&ctx).guardrails,
    );

    // CronJobs change only when the schedule and selector are valid, so a typo
    // never rewrites or removes working CronJobs.
    let mut apply_errors = Vec::new();
    if let (Ok(_), Ok(res)) = (&schedule, &resolution) {
        // Only `Copy` reads the live PVC on a CronJob; the snapshot methods are
        // driven by the operator (the snapshot must exist before a pod runs).
        // A policy outside the admin's limits keeps no CronJob.
        let copies = policy.spec.method == BackupMethod::Copy && not_allowed.is_empty();
        let mut wanted: Vec<CronJob> = Vec::new();
        if copies && !res.selected.is_empty() {
            movers::ensure_service_account(&client, &ns).await?;
            let root = root_movers(&client, &policy, &ns).await?;
            let pinned = movers::pinned_nodes(&client, &ns, &res.selected).await?;
            let specs = observe::pvc_specs(&client, &ns).await?;
            for pvc in &res.selected {
                match desired::cronjob(&policy, pvc, &settings(&ctx).mover_image) {
                    Ok(mut cj) => {
                        if let (Some(r), Some(t)) = (
                            specs.get(pvc),
                            cj.spec.as_mut().and_then(|s| s.job_template.spec.as_mut()),
                        ) {
                            crate::catalog::job::record_pvc_spec(&mut t.template, r);
                        }
                        if root {
                            crate::pod_security::elevate_cronjob(
                                &mut cj,
                                &policy.spec.job.identity,
                            );
                        }
                        if let Some(node) = pinned.get(pvc) {
                            crate::placement::pin_cronjob(&mut cj, node);
                        }
                        crate::maintenance::owner::stamp_cronjob(
                            &mut cj,
                            &settings(&ctx).cluster_id,
                        );
                        wanted.push(cj)
                    }
                    Err(e) => apply_errors.push((pvc.clone(), e.to_string())),
                }
            }
        }
        if let Err(e) = ctx.apply_children(wanted).await {
            apply_errors.push(("*".into(), format!("{e:#}")));
        }
    }

    let started_run_now = if not_allowed.is_empty() {
        run_now(&ctx, &policy).await?
    } else {
        None
    };

    let observe::PolicyJobs {
        backups: jobs,
        maintenance,
    } = observe::policy_jobs(&client, &ns, &name).await?;
    if policy.spec.destination.is_some()
        && not_allowed.is_empty()
        && let Err(e) = super::unlock::drive(&ctx, &policy, &jobs, &maintenance).await
    {
        tracing::warn!(error = %format!("{e:#}"), "stale-lock step failed");
    }
    let obs = Observation {
        now: jiff::Timestamp::now(),
        schedule,
        targets: resolution,
        missing_secrets,
        apply_errors,
        jobs,
    };
    let prev = policy.status.clone().unwrap_or_default();
    let mut computed = status::compute(&policy, &prev, &obs);
    let any_running = obs
        .jobs
        .iter()
        .any(|j| j.outcome == crate::results::JobOutcome::Running);
    blocked::track(&ns, &name, any_running);
    if any_running {
        let stuck = blocked::stuck_jobs(&client, &ns, &name).await?;
        crate::job_failures::apply(&mut computed, &stuck);
    }
    if policy.spec.method == BackupMethod::Snapshot
        && let Ok(res) = &obs.targets
    {
        let result =
            crate::snapshot::reconcile_snapshots(&client, &policy, &res.selected, obs.now).await;
        retry_if_transient(&result)?;
        crate::snapshot::status::apply_outcome(&mut computed, &result);
    }
    if policy.spec.method == BackupMethod::SnapshotThenCopy
        && not_allowed.is_empty()
        && let (Ok(res), Ok(schedule)) = (&obs.targets, &obs.schedule)
    {
        // Only Jobs whose end was observed (and their result read) above
        // may lose their pods, which hold the result.
        let finished: std::collections::HashSet<&str> = obs
            .jobs
            .iter()
            .filter(|j| j.outcome != crate::results::JobOutcome::Running)
            .map(|j| j.name.as_str())
            .collect();
        let result = copy_runs::drive(&ctx, schedule, &res.selected, &finished, obs.now).await;
        retry_if_transient(&result)?;
        crate::snapshot::status::apply_copy_round(&mut computed, &result);
    }
    if !not_allowed.is_empty() {
        crate::guardrails::apply(&mut computed, &not_allowed);
    }
    let mut new_status = computed.status;
    if started_run_now.is_some() {
        new_status.last_run_now = started_run_now;
    }
    let selected = obs
        .targets
        .as_ref()
        .map(|r| r.selected.clone())
        .unwrap_or_default();
    let mut extra_conditions = Vec::new();
    let mut catalog_retry = None;
    // Without its Secrets a catalog pod could not start: wait for them.
    let catalog = if obs.missing_secrets.is_empty() {
        super::catalog::drive(&ctx, &policy, &selected, &obs.jobs, obs.now).await
    } else {
        Ok(Default::default())
    };
    match catalog {
        Ok(out) => {
            catalog_retry = out.retry_after;
            if let Some((plan, started)) = &out.round {
                crate::catalog::bound::apply_listing(
                    &mut new_status,
                    &plan.listed,
                    &plan.stored,
                    &plan.counts,
                );
                new_status.last_catalog_time = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(*started),
                );
                extra_conditions.push(crate::catalog::conditions::cataloged(
                    plan.listed.len(),
                    plan.stored.len(),
                    &plan.failures,
                ));
            } else if let Some(why) = out.failed {
                extra_conditions.push(crate::catalog::conditions::cataloged(
                    0,
                    0,
                    &[("*".into(), why)],
                ));
            }
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "catalog round failed");
            extra_conditions.push(crate::catalog::conditions::cataloged(
                0,
                0,
                &[("*".into(), format!("{e:#}"))],
            ));
        }
    }
    extra_conditions.push(crate::catalog::conditions::partial(
        &new_status.stored_backups,
    ));
    extra_conditions.push(crate::catalog::conditions::retention(&obs.jobs));
    let mut all_conditions = computed.conditions.clone();
    all_conditions.extend(extra_conditions);
    let generation = policy.metadata.generation;
    for c in &all_conditions {
        let old = conditions::find(&prev.conditions, c.type_).cloned();
        let status_str = if c.status { "True" } else { "False" };
        conditions::upsert(
            &mut new_status.conditions,
            c.type_,
            status_str,
            &c.reason,
            &c.message,
            generation,
        );
        let changed = old
            .as_ref()
            .is_none_or(|o| o.status != status_str || o.message != c.message);
        // BackupFailed, BackupPartial, RetentionFailed are bad when True;
        // the others when False.
        let bad = crate::catalog::conditions::BAD_WHEN_TRUE.contains(&c.type_) == c.status;
        if changed && bad {
            tracing::warn!(reason = %c.reason, message = %c.message, "policy problem");
            ctx.event(EventType::Warning, &c.reason, &c.message).await?;
        }
    }
    if let Some(sb) = new_status.stored_backups.first() {
        let first_seen = !prev.stored_backups.iter().any(|p| p.name == sb.name);
        if first_seen {
            let note = format!(
                "stored backup {} of PVC {} ({} bytes) at {}",
                sb.name, sb.pvc_name, sb.size, sb.location
            );
            ctx.event(EventType::Normal, "BackupStored", &note).await?;
        }
    }
    let interval = obs
        .schedule
        .as_ref()
        .ok()
        .and_then(|s| s.interval_seconds(obs.now));
    if let Some(m) = super::backup_metrics(&ctx) {
        m.observe(&ns, &name, &obs.jobs, &new_status.stored_backups, interval);
    }
    if new_status != prev {
        write_status(&ctx, &new_status).await?;
    }

    if let Some(after) = catalog_retry {
        return Err(HandlerError::temporary(
            "waiting for the catalog Job's pod",
            Some(after),
        ));
    }
    if !obs.missing_secrets.is_empty() {
        // Secrets are not watched: look again with backoff until they exist.
        return Err(HandlerError::temporary(
            format!("waiting for Secret(s) {}", obs.missing_secrets.join(", ")),
            None,
        ));
    }
    Ok(())
}

/// Whether the policy's movers run as root: the admin allows it in the
/// namespace and the policy names no other user.
pub(super) async fn root_movers(
    client: &kube::Client,
    policy: &BackupPolicy,
    ns: &str,
) -> Result<bool, HandlerError> {
    if !crate::pod_security::wants_root(&policy.spec.job.identity) {
        return Ok(false);
    }
    Ok(movers::privileged_allowed(client, ns).await?)
}

async fn write_status(ctx: &Context<BackupPolicy>, status: &BackupPolicyStatus) -> HandlerResult {
    let mut value = serde_json::to_value(status)
        .map_err(|e| HandlerError::permanent(format!("encoding status: {e}")))?;
    // A merge patch keeps fields it does not mention: clear the unset ones.
    if let Some(map) = value.as_object_mut() {
        for key in [
            "phase",
            "lastBackupTime",
            "nextRunTime",
            "observedGeneration",
            "lastRunNow",
        ] {
            map.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    ctx.patch_status(value).await?;
    Ok(())
}

/// Starts one Job per selected PVC for a new value of the run-now annotation;
/// returns the value acted on, to be recorded in `status.lastRunNow`.
async fn run_now(
    ctx: &Context<BackupPolicy>,
    policy: &BackupPolicy,
) -> Result<Option<String>, HandlerError> {
    let Some(value) = policy.annotations().get(RUN_NOW_ANNOTATION).cloned() else {
        return Ok(None);
    };
    let prev = policy.status.as_ref().and_then(|s| s.last_run_now.clone());
    if prev.as_deref() == Some(value.as_str()) || policy.spec.method == BackupMethod::Snapshot {
        return Ok(None);
    }
    let ns = policy.namespace().unwrap_or_default();
    let client = ctx.client();
    let pvcs = observe::pvcs(&client, &ns).await?;
    let Ok(res) = targets::resolve(&policy.spec.targets, &pvcs) else {
        return Ok(None);
    };
    if policy.spec.method == BackupMethod::SnapshotThenCopy {
        // The run goes through a snapshot like a scheduled one; the timer and
        // the Job watch carry it on.
        let now = jiff::Timestamp::now();
        for pvc in &res.selected {
            copy_runs::start_now(ctx, pvc, now)
                .await
                .map_err(|e| HandlerError::temporary(e.to_string(), None))?;
        }
        let note = format!(
            "started on-demand snapshot-then-copy of {} PVC(s) for run-now={value}",
            res.selected.len()
        );
        ctx.event(EventType::Normal, "BackupStarted", &note).await?;
        return Ok(Some(value));
    }
    let specs = observe::pvc_specs(&client, &ns).await?;
    movers::ensure_service_account(&client, &ns).await?;
    let root = root_movers(&client, policy, &ns).await?;
    let pinned = movers::pinned_nodes(&client, &ns, &res.selected).await?;
    let api = Api::<Job>::namespaced(client, &ns);
    for pvc in &res.selected {
        let mut job = match desired::manual_job(policy, pvc, &settings(ctx).mover_image, &value) {
            Ok(mut j) => {
                if let (Some(r), Some(s)) = (specs.get(pvc), j.spec.as_mut()) {
                    crate::catalog::job::record_pvc_spec(&mut s.template, r);
                }
                j
            }
            Err(e) => {
                // The same error is on the policy's conditions (its CronJob
                // cannot be made either); the other PVCs still run.
                tracing::warn!(%pvc, error = %e, "no on-demand backup for this PVC");
                continue;
            }
        };
        if root {
            crate::pod_security::elevate_job(&mut job, &policy.spec.job.identity);
        }
        if let Some(node) = pinned.get(pvc) {
            crate::placement::pin_job(&mut job, node);
        }
        crate::maintenance::owner::stamp_job(&mut job, &settings(ctx).cluster_id);
        ctx.adopt(&mut job);
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {} // already started for this value
            Err(e) => return Err(e.into()),
        }
    }
    let note = format!(
        "started on-demand backup of {} PVC(s) for run-now={value}",
        res.selected.len()
    );
    ctx.event(EventType::Normal, "BackupStarted", &note).await?;
    Ok(Some(value))
}

/// Tells the user when the schedule changes (the reconcile does the work).
#[on_field(id = "schedule-changed", path = "spec.schedule")]
pub async fn schedule_changed(ctx: Context<BackupPolicy>) -> HandlerResult {
    let old = ctx
        .old_value()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let new = ctx
        .new_value()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    if !old.is_empty() && old != new {
        ctx.event(
            EventType::Normal,
            "ScheduleChanged",
            &format!("schedule changed from {old:?} to {new:?}"),
        )
        .await?;
    }
    Ok(())
}
