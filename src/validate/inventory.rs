//! The field inventory: for every field of every kind the CRDs serve,
//! whether mesh applies it to Envoy (and which test proves it) or only
//! accepts and stores it. The table itself is `inventory.txt` beside this
//! file, one line per field, so a reviewer reads what mesh does field by
//! field and a change moves a line from `pending` to `applied`.
//!
//! [`unapplied`] walks an object's spec and names each field that is set
//! but not applied: the webhook returns them as warnings at `kubectl
//! apply`, and status writes them in the `Reconciled` condition. A field
//! the table does not know is reported too, so nothing is ever claimed by
//! omission. The tests hold the table to the CRD schemas: every schema
//! field has a line, every line names a schema field, and every applied
//! field's test exists.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::Value;

use super::{Finding, Severity};

/// What mesh does with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Translated into Envoy configuration; `test` (`file::function`) proves it.
    Applied { test: String },
    /// Accepted and stored, not applied yet; `reason` says what that means
    /// for the user, or is empty.
    Pending { reason: String },
    /// The protobuf spelling of another field of the same kind, read as it.
    Alias { of: String },
}

/// The inventory, by kind, then field path (`spec.http[].retries`).
#[derive(Debug, Default)]
pub struct Inventory {
    fields: BTreeMap<String, BTreeMap<String, State>>,
}

/// A line of `inventory.txt` that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("inventory.txt line {line}: {problem}")]
pub struct TableError {
    line: usize,
    problem: String,
}

const TABLE: &str = include_str!("inventory.txt");

/// The words every unapplied field is reported with.
pub const NOT_APPLIED: &str = "accepted but not yet applied by mesh";

impl Inventory {
    /// The inventory compiled into mesh. A table that cannot be read (the
    /// unit tests stop that from ever shipping) gives an empty inventory,
    /// which reports every field as unknown rather than claim any.
    pub fn get() -> &'static Inventory {
        static INVENTORY: OnceLock<Inventory> = OnceLock::new();
        INVENTORY.get_or_init(|| {
            Inventory::parse(TABLE).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the field inventory is unreadable: every field is reported as not applied");
                Inventory::default()
            })
        })
    }

    /// Reads the table: `[Kind]` headers, then `path state rest` lines.
    pub fn parse(text: &str) -> Result<Inventory, TableError> {
        let mut fields = BTreeMap::new();
        let mut kind: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let err = |problem: String| TableError { line: i + 1, problem };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                kind = Some(name.to_string());
                continue;
            }
            let kind = kind.clone().ok_or_else(|| err("a field before any [Kind] header".into()))?;
            let mut words = line.split_whitespace();
            let path = words.next().unwrap_or_default().to_string();
            let state_word = words.next().unwrap_or_default();
            let detail = words.collect::<Vec<_>>().join(" ");
            let state = match state_word {
                "applied" if !detail.is_empty() => State::Applied { test: detail.to_string() },
                "applied" => return Err(err(format!("{path} is applied but names no test"))),
                "pending" => State::Pending { reason: detail.to_string() },
                "alias" if !detail.is_empty() => State::Alias { of: detail.to_string() },
                other => {
                    return Err(err(format!("{path}: unknown state {other:?} (applied, pending or alias)")));
                }
            };
            let of_kind: &mut BTreeMap<String, State> = fields.entry(kind.clone()).or_default();
            if of_kind.insert(path.clone(), state).is_some() {
                return Err(err(format!("{kind} {path} is listed twice")));
            }
        }
        Ok(Inventory { fields })
    }

    /// Every (kind, path) and its state, in table order within a kind.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str, &State)> {
        self.fields.iter().flat_map(|(k, paths)| paths.iter().map(move |(p, s)| (k.as_str(), p.as_str(), s)))
    }

    /// The state of a field as written in the table (an alias is not followed).
    pub fn line(&self, kind: &str, path: &str) -> Option<&State> {
        self.fields.get(kind)?.get(path)
    }

    /// The state of a field, aliases followed.
    pub fn state(&self, kind: &str, path: &str) -> Option<&State> {
        match self.line(kind, path)? {
            State::Alias { of } => self.line(kind, of),
            state => Some(state),
        }
    }

    /// Whether the table lists fields under `prefix` (children of a field).
    fn has_under(&self, kind: &str, prefix: &str) -> bool {
        let Some(paths) = self.fields.get(kind) else { return false };
        let from = (std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded);
        paths.range::<str, _>(from).next().is_some_and(|(p, _)| p.starts_with(prefix))
    }
}

/// The fields of `spec` (an object of `kind`, as JSON) that are set but
/// not applied, as warnings at the field's own path (`spec.http[0].fault`).
/// A field under one that is not applied is not listed again.
pub fn unapplied(kind: &str, spec: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    walk_object(Inventory::get(), kind, spec, "spec", "spec", &mut out);
    out
}

/// A one-line summary of [`unapplied`]'s findings, for a status condition.
pub fn summary(findings: &[Finding]) -> String {
    let fields: Vec<String> = findings
        .iter()
        .map(|f| match f.message.strip_prefix(NOT_APPLIED).and_then(|r| r.strip_prefix(": ")) {
            Some(reason) => format!("{} ({reason})", f.field),
            None => f.field.clone(),
        })
        .collect();
    format!("{NOT_APPLIED}: {}", fields.join("; "))
}

fn walk_object(
    inventory: &Inventory,
    kind: &str,
    value: &Value,
    at: &str,
    path: &str,
    out: &mut Vec<Finding>,
) {
    let Value::Object(map) = value else { return };
    for (name, child) in map {
        visit(inventory, kind, child, &format!("{at}.{name}"), &format!("{path}.{name}"), out);
    }
}

/// One set field: `at` is where it is in this object (`spec.http[0].fault`),
/// `path` its line in the table (`spec.http[].fault`).
fn visit(inventory: &Inventory, kind: &str, value: &Value, at: &str, path: &str, out: &mut Vec<Finding>) {
    if value.is_null() {
        return;
    }
    let report = |out: &mut Vec<Finding>, reason: &str| {
        let message =
            if reason.is_empty() { NOT_APPLIED.to_string() } else { format!("{NOT_APPLIED}: {reason}") };
        out.push(Finding { severity: Severity::Warning, field: at.to_string(), message });
    };
    match inventory.state(kind, path) {
        None => return report(out, "mesh does not know this field"),
        Some(State::Pending { reason }) => return report(out, reason),
        Some(State::Alias { .. }) => return report(out, "its alias target is not in the inventory"),
        Some(State::Applied { .. }) => {}
    }
    if let Some(reason) = unapplied_value(kind, path, value) {
        report(out, &reason);
    }
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if item.is_object() {
                    descend(inventory, kind, item, &format!("{at}[{i}]"), &format!("{path}[]"), out);
                }
            }
        }
        Value::Object(_) => descend(inventory, kind, value, at, path, out),
        _ => {}
    }
}

/// Into an object: a map (`headers{}`) by key, a message by field; an
/// object the table lists no children of (`sourceLabels`) is a leaf.
fn descend(inventory: &Inventory, kind: &str, value: &Value, at: &str, path: &str, out: &mut Vec<Finding>) {
    let Value::Object(map) = value else { return };
    if inventory.has_under(kind, &format!("{path}{{}}")) {
        // A map's values have no line of their own, only their fields.
        for (key, item) in map {
            descend(inventory, kind, item, &format!("{at}[{key:?}]"), &format!("{path}{{}}"), out);
        }
    } else if inventory.has_under(kind, &format!("{path}.")) {
        walk_object(inventory, kind, value, at, path, out);
    }
}

/// Values of an applied field that mesh does not apply: a Gateway's
/// servers whose protocol and TLS mode no gateway listener serves yet
/// (AUTO_PASSTHROUGH, TLS terminated for `tcp` rules, UDP); a Sidecar
/// ingress listener's `unix://` endpoint; a Sidecar listener's capture
/// mode NONE (DEFAULT and IPTABLES are the mesh's iptables capture).
fn unapplied_value(kind: &str, path: &str, value: &Value) -> Option<String> {
    if kind == "Sidecar" && matches!(path, "spec.ingress[].captureMode" | "spec.egress[].captureMode") {
        return (value.as_str() == Some("NONE")).then(|| {
            "NONE is not applied: traffic is always captured by iptables, and no listener of its own is built \
             for the application to call"
                .to_string()
        });
    }
    if kind == "Sidecar" && path == "spec.ingress[].defaultEndpoint" {
        return value.as_str().filter(|v| v.starts_with("unix://")).map(|_| {
            "a unix:// endpoint is not served: the listener is left out, use 127.0.0.1:PORT or 0.0.0.0:PORT"
                .to_string()
        });
    }
    if kind != "Gateway" || path != "spec.servers" {
        return None;
    }
    let servers: Vec<crate::api::gateway::Server> = serde_json::from_value(value.clone()).ok()?;
    let left: Vec<String> = servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.port.as_ref().is_some_and(|p| p.protocol.is_some()))
        .filter(|(_, s)| crate::model::gateway::port_kind(s).is_none())
        .map(|(i, s)| {
            let protocol = s.port.as_ref().and_then(|p| p.protocol.as_deref()).unwrap_or_default();
            match s.tls.as_ref().and_then(|t| t.mode) {
                Some(mode) => {
                    format!("servers[{i}] ({protocol}, {})", serde_json::json!(mode).as_str().unwrap_or(""))
                }
                None => format!("servers[{i}] ({protocol})"),
            }
        })
        .collect();
    (!left.is_empty()).then(|| {
        format!(
            "{} get no listener: gateways serve HTTP, HTTP2, GRPC, HTTPS, TCP and TLS PASSTHROUGH servers, not \
             AUTO_PASSTHROUGH, TLS terminated for tcp rules, or UDP",
            left.join(", ")
        )
    })
}

#[cfg(test)]
mod tests;
