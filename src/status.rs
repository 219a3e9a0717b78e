//! Status written back to Istio objects, so `kubectl get -o yaml` says what
//! the mesh made of them, with observedGeneration:
//! - `Accepted`: True, or False with the validation errors; warnings are
//!   listed in its message, and each problem is also an Event;
//! - `Reconciled`: True when mesh applies every field that is set; False,
//!   reason `Unsupported`, listing the fields it accepts but does not apply
//!   yet (the field inventory, [`crate::validate::inventory`]), or reason
//!   `Invalid` when the object is not accepted.
//!
//! Only the leader writes (Lease-based election; all replicas serve), and
//! only what differs from the stored status: a restarted controller
//! computes the same status and writes nothing, so no status is lost.

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ConfigCondition, ConfigStatus};
use crate::index::{Index, SharedIndex};
use crate::model::Config;
use crate::validate::{self, Context, Severity, Validate, inventory};

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

/// The conditions of an object: `Accepted` (is it valid, with its
/// warnings) and `Reconciled` (does mesh apply every field that is set),
/// each keeping its transition time while its status has not changed.
fn desired<S: Validate + Serialize>(
    kind: &'static str,
    c: &Config<S>,
    ctx: &Context,
    now: Timestamp,
) -> ConfigStatus {
    let mut findings = c.spec.validate(&c.key.namespace, ctx);
    findings.extend(c.spec.validate_named(&c.key.namespace, &c.key.name, ctx));
    findings.extend(validate::check_name(kind, &c.key.name));
    let render = |severity: Severity| -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.severity == severity)
            .map(|f| validate::render(kind, &c.key.namespace, &c.key.name, f))
            .collect()
    };
    let (errors, warnings) = (render(Severity::Error), render(Severity::Warning));
    let accepted = if !errors.is_empty() {
        (false, "Invalid", errors.join("\n"))
    } else if !warnings.is_empty() {
        (true, "AcceptedWithWarnings", warnings.join("\n"))
    } else {
        (true, "Accepted", "the configuration is valid".to_string())
    };
    let unapplied = validate::unapplied_fields(kind, &c.spec);
    let reconciled = if !errors.is_empty() {
        (false, "Invalid", "nothing is applied: the configuration is invalid (see Accepted)".to_string())
    } else if !unapplied.is_empty() {
        (false, "Unsupported", inventory::summary(&unapplied))
    } else {
        (true, "Applied", "every field set is applied by mesh".to_string())
    };
    let condition = |type_: &str, (ok, reason, message): (bool, &str, String)| {
        let status = if ok { "True" } else { "False" };
        let previous = c.status.as_ref().and_then(|s| s.conditions.iter().find(|p| p.type_ == type_));
        let transition = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(now.to_string()),
        };
        ConfigCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(cut(message)),
            last_transition_time: transition,
            observed_generation: Some(c.generation),
        }
    };
    ConfigStatus {
        conditions: vec![condition("Accepted", accepted), condition("Reconciled", reconciled)],
        observed_generation: Some(c.generation),
    }
}

/// A condition's message, cut at [`MAX_MESSAGE`] on a character boundary.
fn cut(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

fn collect<S: Validate + Serialize, R: kube::Resource<DynamicType = ()>>(
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
        let problem = event_for(&status);
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

/// The Event worth publishing for a status: (reason, note), if any.
fn event_for(status: &ConfigStatus) -> Option<(String, String)> {
    let message = |c: &ConfigCondition| c.message.clone().unwrap_or_default();
    status.conditions.iter().find_map(|c| match (c.type_.as_str(), c.reason.as_deref()) {
        ("Accepted", Some("Invalid")) => Some(("InvalidConfiguration".to_string(), message(c))),
        ("Accepted", Some("AcceptedWithWarnings")) => Some(("ConfigurationWarning".to_string(), message(c))),
        ("Reconciled", Some("Unsupported")) => Some(("NotApplied".to_string(), message(c))),
        _ => None,
    })
}

fn pending(index: &Index, now: Timestamp) -> Vec<Write> {
    let state = index.state();
    let ctx = Context::of(state);
    let mut out = Vec::new();
    collect::<_, api::VirtualService>("VirtualService", state.virtual_services, &ctx, now, &mut out);
    collect::<_, api::DestinationRule>("DestinationRule", state.destination_rules, &ctx, now, &mut out);
    collect::<_, api::Gateway>("Gateway", state.gateways, &ctx, now, &mut out);
    collect::<_, api::ServiceEntry>("ServiceEntry", state.service_entries, &ctx, now, &mut out);
    collect::<_, api::Sidecar>("Sidecar", state.sidecars, &ctx, now, &mut out);
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
    collect::<_, api::PeerAuthentication>(
        "PeerAuthentication",
        state.peer_authentications,
        &ctx,
        now,
        &mut out,
    );
    collect::<_, api::RequestAuthentication>(
        "RequestAuthentication",
        state.request_authentications,
        &ctx,
        now,
        &mut out,
    );
    collect::<_, api::Policy>("Policy", state.policies, &ctx, now, &mut out);
    collect::<_, api::MeshPolicy>("MeshPolicy", state.mesh_policies, &ctx, now, &mut out);
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::destination_rule::DestinationRuleSpec;
    use crate::api::virtual_service::VirtualServiceSpec;
    use crate::model::ObjectKey;

    const T0: &str = "2026-01-02T03:04:05Z";
    const T1: &str = "2026-01-02T03:09:05Z";

    fn at(t: &str) -> Timestamp {
        t.parse().expect("a timestamp")
    }

    fn config<S: serde::de::DeserializeOwned>(spec: serde_json::Value, generation: i64) -> Config<S> {
        Config {
            key: ObjectKey::new("default", "reviews"),
            generation,
            created: None,
            spec: serde_json::from_value(spec).expect("a spec"),
            status: None,
        }
    }

    fn condition<'a>(status: &'a ConfigStatus, type_: &str) -> &'a ConfigCondition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}"))
    }

    fn summary(c: &ConfigCondition) -> (String, String) {
        (c.status.clone(), c.reason.clone().unwrap_or_default())
    }

    #[test]
    fn a_fully_applied_object_is_accepted_and_reconciled() {
        let c = config::<VirtualServiceSpec>(
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
            3,
        );
        let status = desired("VirtualService", &c, &Context::default(), at(T0));
        assert_eq!(summary(condition(&status, "Accepted")), ("True".into(), "Accepted".into()));
        assert_eq!(summary(condition(&status, "Reconciled")), ("True".into(), "Applied".into()));
        assert!(status.conditions.iter().all(|c| c.observed_generation == Some(3)));
        assert!(status.conditions.iter().all(|c| c.last_transition_time.as_deref() == Some(T0)));
        assert_eq!(event_for(&status), None);
    }

    #[test]
    fn fields_not_applied_make_reconciled_false_and_an_event() {
        let c = config::<DestinationRuleSpec>(
            json!({"host": "reviews", "trafficPolicy": {"proxyProtocol": {"version": "V1"}}}),
            1,
        );
        let status = desired("DestinationRule", &c, &Context::default(), at(T0));
        assert_eq!(summary(condition(&status, "Accepted")), ("True".into(), "Accepted".into()));
        let reconciled = condition(&status, "Reconciled");
        assert_eq!(summary(reconciled), ("False".into(), "Unsupported".into()));
        let message = reconciled.message.as_deref().unwrap_or_default();
        assert!(
            message.contains("accepted but not yet applied by mesh: spec.trafficPolicy.proxyProtocol"),
            "{message}"
        );
        assert_eq!(event_for(&status).map(|(reason, _)| reason), Some("NotApplied".into()));
    }

    /// Gateways, ServiceEntries and Sidecars are applied, but for the
    /// fields still pending: those make them Reconciled=False.
    #[test]
    fn pending_fields_of_gateways_entries_and_sidecars_leave_them_unsupported() {
        use crate::api::{gateway::GatewaySpec, service_entry::ServiceEntrySpec, sidecar::SidecarSpec};
        let gateway = config::<GatewaySpec>(
            json!({"selector": {"istio": "ingressgateway"},
                   "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
            1,
        );
        let entry = config::<ServiceEntrySpec>(
            json!({"hosts": ["www.googleapis.com"], "resolution": "DNS",
                   "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}]}),
            1,
        );
        let with_locality = config::<ServiceEntrySpec>(
            json!({"hosts": ["db.example.com"], "resolution": "STATIC",
                   "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}],
                   "endpoints": [{"address": "10.0.0.1", "locality": "us-east1/us-east1-b"}]}),
            1,
        );
        let applied = desired("Gateway", &gateway, &Context::default(), at(T0));
        assert_eq!(summary(condition(&applied, "Reconciled")).0, "True");
        let pending = config::<GatewaySpec>(
            json!({"selector": {"istio": "ingressgateway"},
                   "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"],
                                "bind": "10.0.0.1"}]}),
            1,
        );
        let sidecar = config::<SidecarSpec>(json!({"egress": [{"hosts": ["./*"], "bind": "127.0.0.1"}]}), 1);
        let statuses = [
            ("spec.servers[0].bind", desired("Gateway", &pending, &Context::default(), at(T0))),
            ("spec.egress[0].bind", desired("Sidecar", &sidecar, &Context::default(), at(T0))),
        ];
        for (field, status) in statuses {
            assert_eq!(summary(condition(&status, "Accepted")), ("True".into(), "Accepted".into()));
            let reconciled = condition(&status, "Reconciled");
            assert_eq!(summary(reconciled), ("False".into(), "Unsupported".into()));
            let message = reconciled.message.as_deref().unwrap_or_default();
            assert!(message.contains(field) && message.contains("not yet applied"), "{message}");
        }
        let applied = desired("ServiceEntry", &entry, &Context::default(), at(T0));
        assert_eq!(summary(condition(&applied, "Reconciled")), ("True".into(), "Applied".into()));
        let status = desired("ServiceEntry", &with_locality, &Context::default(), at(T0));
        let reconciled = condition(&status, "Reconciled");
        assert_eq!(summary(reconciled), ("False".into(), "Unsupported".into()));
        let message = reconciled.message.as_deref().unwrap_or_default();
        assert!(message.contains("locality") && !message.contains("spec.resolution"), "{message}");
        let egress = config::<SidecarSpec>(
            json!({"egress": [{"hosts": ["./*", "istio-system/*"]}],
                   "ingress": [{"port": {"number": 9080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:8080"}],
                   "inboundConnectionPool": {"tcp": {"maxConnections": 10}},
                   "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
            1,
        );
        let status = desired("Sidecar", &egress, &Context::default(), at(T0));
        assert_eq!(summary(condition(&status, "Reconciled")), ("True".into(), "Applied".into()));
        let invalid = config::<GatewaySpec>(json!({"selector": {"istio": "ingressgateway"}}), 2);
        let status = desired("Gateway", &invalid, &Context::default(), at(T0));
        assert_eq!(summary(condition(&status, "Accepted")), ("False".into(), "Invalid".into()));
    }

    #[test]
    fn an_invalid_object_is_not_reconciled() {
        let c = config::<VirtualServiceSpec>(
            json!({"hosts": ["reviews"], "http": [{"timeout": "10", "route": [{"destination": {"host": "reviews"}}]}]}),
            1,
        );
        let status = desired("VirtualService", &c, &Context::default(), at(T0));
        assert_eq!(summary(condition(&status, "Accepted")), ("False".into(), "Invalid".into()));
        assert_eq!(summary(condition(&status, "Reconciled")), ("False".into(), "Invalid".into()));
        assert_eq!(event_for(&status).map(|(reason, _)| reason), Some("InvalidConfiguration".into()));
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let spec = json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}});
        let mut c = config::<DestinationRuleSpec>(spec, 1);
        c.status = Some(desired("DestinationRule", &c, &Context::default(), at(T0)));
        // Recomputed later with nothing changed: the very same status, so nothing is written.
        let again = desired("DestinationRule", &c, &Context::default(), at(T1));
        assert_eq!(c.status.as_ref(), Some(&again));

        // The PROXY protocol is not applied: Reconciled turns False at T1, Accepted keeps T0.
        c.spec = serde_json::from_value(json!({"host": "reviews", "trafficPolicy": {"proxyProtocol": {}}}))
            .expect("a spec");
        c.generation = 2;
        let changed = desired("DestinationRule", &c, &Context::default(), at(T1));
        assert_eq!(condition(&changed, "Accepted").last_transition_time.as_deref(), Some(T0));
        assert_eq!(condition(&changed, "Reconciled").last_transition_time.as_deref(), Some(T1));
        assert_eq!(changed.observed_generation, Some(2));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let cut = cut(long);
        assert!(cut.ends_with("...") && cut.len() <= MAX_MESSAGE + 3);
    }
}
