//! Status written back to Istio objects, so `kubectl get -o yaml` says what
//! the mesh made of them: condition `Accepted` (True, or False with the
//! validation errors; warnings are listed in its message), with
//! observedGeneration, and an Event for each problem.
//!
//! Only the leader writes (Lease-based election; all replicas serve), and
//! only what differs from the stored status: a restarted controller
//! computes the same status and writes nothing, so no status is lost.
//! `Reconciled` (pushed to proxies) comes with the xDS server.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ConfigCondition, ConfigStatus};
use crate::index::{Index, SharedIndex};
use crate::model::Config;
use crate::validate::{self, Context, Severity, Validate};

/// Conditions longer than this are cut; the Events carry the rest.
const MAX_MESSAGE: usize = 1024;

/// One status to write.
struct Write {
    resource: ApiResource,
    kind: &'static str,
    namespace: String,
    name: String,
    status: ConfigStatus,
    /// (reason, message) of a problem worth an Event.
    problem: Option<(String, String)>,
    generation: i64,
}

/// The Accepted condition for an object, keeping the transition time when
/// the verdict has not changed.
fn desired<S: Validate>(kind: &'static str, c: &Config<S>, ctx: &Context, now: Timestamp) -> ConfigStatus {
    let findings = c.spec.validate(&c.key.namespace, ctx);
    let render = |severity: Severity| -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.severity == severity)
            .map(|f| validate::render(kind, &c.key.namespace, &c.key.name, f))
            .collect()
    };
    let (errors, warnings) = (render(Severity::Error), render(Severity::Warning));
    let (ok, reason, message) = if !errors.is_empty() {
        (false, "Invalid", errors.join("\n"))
    } else if !warnings.is_empty() {
        (true, "AcceptedWithWarnings", warnings.join("\n"))
    } else {
        (true, "Accepted", "the configuration is valid".to_string())
    };
    let status = if ok { "True" } else { "False" };
    let previous = c.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Accepted"));
    let transition = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Some(now.to_string()),
    };
    let mut message = message;
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    ConfigStatus {
        conditions: vec![ConfigCondition {
            type_: "Accepted".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: transition,
            observed_generation: Some(c.generation),
        }],
        observed_generation: Some(c.generation),
    }
}

fn collect<S: Validate, R: kube::Resource<DynamicType = ()>>(
    kind: &'static str,
    store: &crate::index::Store<Config<S>>,
    ctx: &Context,
    now: Timestamp,
    out: &mut Vec<Write>,
) {
    for c in store.values() {
        let status = desired(kind, c, ctx, now);
        if c.status.as_ref() == Some(&status) {
            continue;
        }
        let condition = &status.conditions[0];
        let problem = match condition.reason.as_deref() {
            Some("Invalid") => {
                Some(("InvalidConfiguration".to_string(), condition.message.clone().unwrap_or_default()))
            }
            Some("AcceptedWithWarnings") => {
                Some(("ConfigurationWarning".to_string(), condition.message.clone().unwrap_or_default()))
            }
            _ => None,
        };
        out.push(Write {
            resource: ApiResource::erase::<R>(&()),
            kind,
            namespace: c.key.namespace.clone(),
            name: c.key.name.clone(),
            generation: c.generation,
            status,
            problem,
        });
    }
}

fn pending(index: &Index, now: Timestamp) -> Vec<Write> {
    let state = index.state();
    let ctx = Context::of(state);
    let mut out = Vec::new();
    collect::<_, api::VirtualService>("VirtualService", state.virtual_services, &ctx, now, &mut out);
    collect::<_, api::DestinationRule>("DestinationRule", state.destination_rules, &ctx, now, &mut out);
    collect::<_, api::ServiceRole>("ServiceRole", state.service_roles, &ctx, now, &mut out);
    collect::<_, api::ServiceRoleBinding>(
        "ServiceRoleBinding",
        state.service_role_bindings,
        &ctx,
        now,
        &mut out,
    );
    collect::<_, api::ClusterRbacConfig>(
        "ClusterRbacConfig",
        state.cluster_rbac_configs,
        &ctx,
        now,
        &mut out,
    );
    collect::<_, api::RbacConfig>("RbacConfig", state.rbac_configs, &ctx, now, &mut out);
    out
}

/// Writes status while this replica leads, until shutdown.
pub async fn run(
    client: Client,
    index: SharedIndex,
    mut leader: watch::Receiver<bool>,
    instance: String,
    shutdown: CancellationToken,
) {
    // Only what validation reads wakes this loop: Pod churn does not.
    let mut revisions = index.lock().subscribe_config();
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "mesh-controller".into(), instance: Some(instance) },
    );
    let mut told: HashSet<(String, String, String, i64, String)> = HashSet::new();
    loop {
        tokio::select! {
            r = revisions.changed() => if r.is_err() { return },
            l = leader.changed() => if l.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        if !*leader.borrow_and_update() {
            continue;
        }
        // Bursts of changes (a kubectl apply of a whole file) settle first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        revisions.borrow_and_update();
        let writes = pending(&index.lock(), Timestamp::now());
        for w in writes {
            let api: Api<DynamicObject> = if w.namespace.is_empty() {
                Api::all_with(client.clone(), &w.resource)
            } else {
                Api::namespaced_with(client.clone(), &w.namespace, &w.resource)
            };
            let patch = json!({ "status": w.status });
            if let Err(e) = api.patch_status(&w.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(kind = w.kind, namespace = %w.namespace, name = %w.name, error = %e, "writing status");
                continue;
            }
            let Some((reason, note)) = w.problem else { continue };
            let key = (w.kind.to_string(), w.namespace.clone(), w.name.clone(), w.generation, reason.clone());
            if !told.insert(key) {
                continue;
            }
            let reference = ObjectReference {
                api_version: Some(w.resource.api_version.clone()),
                kind: Some(w.kind.into()),
                name: Some(w.name.clone()),
                namespace: (!w.namespace.is_empty()).then(|| w.namespace.clone()),
                ..Default::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason,
                note: Some(note.chars().take(1024).collect()),
                action: "Validate".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "publishing an event");
            }
        }
    }
}
