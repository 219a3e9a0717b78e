//! Checks shared by the kinds: DNS names, IP addresses, labels, durations,
//! percentages, header names and values, regular expressions, `exportTo`
//! and gateway names. What a host name or a duration means is the model's
//! ([`crate::model::host`], [`crate::model::duration`]): these checks say
//! whether one is well formed, translation reads it by the same grammar.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::api::networking::{Percent, WorkloadSelector};
use crate::api::virtual_service::StringMatch;
use crate::model::duration;
pub(super) use crate::model::duration::DurationError;
pub(super) use crate::model::host::is_ip;

use super::{Finding, Severity};

/// Collects findings while the checks walk a spec.
#[derive(Default)]
pub(super) struct Out {
    pub findings: Vec<Finding>,
}

impl Out {
    pub fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field.into(), message.into());
    }

    pub fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field.into(), message.into());
    }

    fn push(&mut self, severity: Severity, field: String, message: String) {
        self.findings.push(Finding { severity, field, message });
    }
}

/// A map key as it appears in a field path: `headers["end-user"]`.
pub(super) fn key(path: &str, key: &str) -> String {
    format!("{path}[{key:?}]")
}

// ---------------------------------------------------------------- DNS names

/// A DNS-1123 label: letters, digits and '-', not starting or ending with
/// '-', at most 63 characters (Istio accepts upper case too).
pub(super) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A label that may carry a leading wildcard: `*`, `*foo`, `*-foo` or a
/// plain label.
pub(super) fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    if s.len() > 63 {
        return false;
    }
    let rest = s.strip_prefix("*-").or_else(|| s.strip_prefix('*')).unwrap_or(s);
    is_dns1123_label(rest)
}

/// Every label of a dotted name is a DNS-1123 label; the top-level domain is
/// not all digits; a trailing dot is allowed.
fn check_dns_labels(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let tld = labels[labels.len() - 1];
    if !tld.is_empty() && tld.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("its top-level domain {tld:?} is all digits"));
    }
    for (i, label) in labels.iter().enumerate() {
        if i == labels.len() - 1 && label.is_empty() && i > 0 {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(if label.is_empty() {
                "it has an empty label (two dots in a row, or a leading dot)".to_string()
            } else {
                format!("label {label:?} is not a DNS label (letters, digits and '-', at most 63)")
            });
        }
    }
    Ok(())
}

fn check_length(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 255 {
        return Err("it is longer than 255 characters".into());
    }
    Ok(())
}

/// A fully-qualified (or short) DNS name without wildcards.
pub(super) fn check_fqdn(name: &str) -> Result<(), String> {
    check_length(name)?;
    check_dns_labels(name)
}

/// A DNS name whose first label may be a wildcard (`*.example.com`, `*`).
pub(super) fn check_wildcard_domain(name: &str) -> Result<(), String> {
    check_length(name)?;
    let (first, rest) = match name.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(if first.contains('*') {
            format!("label {first:?} puts '*' somewhere other than the start of the first label")
        } else if first.is_empty() {
            "it starts with a dot".to_string()
        } else {
            format!("label {first:?} is not a DNS label (letters, digits and '-', at most 63)")
        });
    }
    match rest {
        Some(rest) => check_dns_labels(rest).map_err(|e| {
            if rest.contains('*') {
                "'*' is only allowed as the whole first label, as in *.example.com".into()
            } else {
                e
            }
        }),
        None => Ok(()),
    }
}

/// The fix appended to every host-name error.
pub(super) const HOST_FIX: &str = "write a DNS name such as \"reviews\", \"reviews.default.svc.cluster.local\" \
     or \"*.example.com\"";

// ------------------------------------------------------------ IP addresses

/// An IP address or a CIDR block.
pub(super) fn check_ip_or_cidr(s: &str) -> Result<(), String> {
    match s.split_once('/') {
        None => {
            if is_ip(s) {
                Ok(())
            } else {
                Err(format!(
                    "{s:?} is not an IP address or CIDR block: write e.g. \"10.1.0.0/16\" or \"10.1.2.3\""
                ))
            }
        }
        Some((ip, bits)) => {
            let max = match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => 32,
                Ok(IpAddr::V6(_)) => 128,
                Err(_) => 0,
            };
            let ok = max > 0 && !bits.is_empty() && bits.parse::<u32>().is_ok_and(|b| b <= max);
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{s:?} is not a valid CIDR block: write address/prefix-length, e.g. \"10.1.0.0/16\""
                ))
            }
        }
    }
}

pub(super) fn is_port(n: i64) -> bool {
    (1..=65535).contains(&n)
}

pub(super) fn check_port(out: &mut Out, path: &str, n: i64) {
    if !is_port(n) {
        out.err(path, format!("port {n} is out of range: use a port number from 1 to 65535"));
    }
}

// ------------------------------------------------------------------ labels

fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_label_key(k: &str) -> bool {
    match k.rsplit_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253 && prefix.split('.').all(is_dns1123_label) && is_qualified_name(name)
        }
        None => is_qualified_name(k),
    }
}

/// Kubernetes label keys and values, as in a subset's or a match's labels.
pub(super) fn check_labels(out: &mut Out, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if !is_label_key(k) {
            out.err(
                key(path, k),
                format!(
                    "{k:?} is not a valid label key: use letters, digits, '-', '_' and '.', starting and \
                     ending with a letter or digit, optionally after a DNS prefix and '/', e.g. \"app\" or \
                     \"example.com/tier\""
                ),
            );
        }
        let value_ok = v.is_empty() || (v.len() <= 63 && is_qualified_name(v));
        if !value_ok {
            out.err(
                key(path, k),
                format!(
                    "{v:?} is not a valid label value: use at most 63 letters, digits, '-', '_' and '.', \
                     starting and ending with a letter or digit, e.g. \"v1\""
                ),
            );
        }
    }
}

/// Istio's workload selector rules: no empty keys, no wildcards, and
/// (warning) an empty selector selects everything.
pub(super) fn check_workload_selector(out: &mut Out, path: &str, selector: &WorkloadSelector) {
    for (k, v) in &selector.match_labels {
        if k.is_empty() {
            out.err(format!("{path}.matchLabels"), "a label key is empty: give every label a key");
        }
        if k.contains('*') || v.contains('*') {
            out.err(
                key(&format!("{path}.matchLabels"), k),
                format!("wildcards are not supported in selectors ({k}={v}): list exact label values"),
            );
        }
    }
    if selector.match_labels.is_empty() {
        out.warn(
            format!("{path}.matchLabels"),
            "the workload selector has no labels, so it selects every workload in the namespace: add \
             matchLabels, or remove workloadSelector",
        );
    }
}

// --------------------------------------------------------------- durations

const MS: Duration = Duration::from_millis(1);

fn unparseable(value: &str) -> String {
    let example = if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) {
        format!("{value}s")
    } else {
        "5s".to_string()
    };
    format!(
        "{value:?} is not a duration: write a number with a unit (ms, s, m or h), e.g. {example:?} or \"250ms\""
    )
}

/// Reads a duration by the model's grammar ([`duration::parse`]), with an
/// error when it is none; a negative one is left to the caller.
pub(super) fn duration_parses(out: &mut Out, path: &str, value: &str) -> Result<Duration, DurationError> {
    let d = duration::parse(value);
    match d {
        Err(DurationError::Invalid) => out.err(path, unparseable(value)),
        Err(DurationError::TooLong) => out.err(
            path,
            format!("duration {value:?} is longer than Go's limit of about 292 years: use a shorter one"),
        ),
        Ok(_) | Err(DurationError::Negative) => {}
    }
    d
}

/// Istio's `ValidateDuration`: at least 1ms, whole milliseconds.
pub(super) fn check_duration(out: &mut Out, path: &str, value: &str) -> Option<Duration> {
    let shorter = || format!("duration {value:?} is shorter than 1ms: use at least \"1ms\"");
    let d = match duration_parses(out, path, value) {
        Ok(d) => d,
        Err(DurationError::Negative) => {
            out.err(path, shorter());
            return None;
        }
        Err(_) => return None,
    };
    if d < MS {
        out.err(path, shorter());
    } else if d.subsec_nanos() % 1_000_000 != 0 {
        out.err(
            path,
            format!(
                "duration {value:?} is finer than a millisecond: round it to whole milliseconds, e.g. \"1ms\""
            ),
        );
    }
    Some(d)
}

// ------------------------------------------------------------- percentages

/// Istio's `validatePercentage`: 0, or 0.0001 to 100.
pub(super) fn check_percentage(out: &mut Out, path: &str, p: Option<&Percent>) {
    let Some(v) = p.and_then(|p| p.value) else { return };
    if !(0.0..=100.0).contains(&v) || (v > 0.0 && v < 0.0001) {
        out.err(
            format!("{path}.value"),
            format!("percentage {v} is out of range: use 0, or a value from 0.0001 to 100"),
        );
    }
}

/// Istio's `ValidatePercent`, for whole percentages.
pub(super) fn check_percent(out: &mut Out, path: &str, v: i64) {
    if !(0..=100).contains(&v) {
        out.err(path, format!("percentage {v} is out of range: use a whole number from 0 to 100"));
    }
}

// ---------------------------------------------------------------- headers

fn is_header_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// `@request.auth.claims.sub` or `@request.auth.claims[sub]`: Istio's JWT
/// claim routing keys.
pub(super) fn is_jwt_claim_route(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("@request.auth.claims") else { return false };
    if let Some(claim) = rest.strip_prefix('.') {
        return !claim.is_empty() && claim.split('.').all(|c| !c.is_empty());
    }
    rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')).is_some_and(|c| !c.is_empty())
}

/// A header name in a match: letters, digits, '-' and '_' (or a JWT claim
/// key). Upper case works (Envoy compares names case-insensitively) but
/// Istio documents lower case, so it is a warning.
pub(super) fn check_match_header_name(out: &mut Out, path: &str, name: &str) {
    if name.is_empty() {
        out.err(path, "a header name is empty: name the header, e.g. \"x-user\"");
    } else if is_jwt_claim_route(name) {
    } else if !is_header_token(name) {
        out.err(
            path,
            format!(
                "{name:?} is not a valid header name: use letters, digits, '-' and '_' only, e.g. \"x-user\" \
                 (or \"@request.auth.claims.<claim>\" for a JWT claim)"
            ),
        );
    } else if name.bytes().any(|c| c.is_ascii_uppercase()) {
        out.warn(
            path,
            format!(
                "header names are matched in lower case: write {:?} (Istio documents lower-case names)",
                name.to_ascii_lowercase()
            ),
        );
    }
}

/// Header names for CORS `allowHeaders`/`exposeHeaders`: tokens or "*".
pub(super) fn check_cors_header_name(out: &mut Out, path: &str, name: &str) {
    if name == "*" {
        return;
    }
    if name.is_empty() {
        out.err(path, "a header name is empty: name the header, or use \"*\"");
    } else if !is_header_token(name) {
        out.err(path, format!("{name:?} is not a valid header name: use letters, digits, '-' and '_' only"));
    }
}

pub(super) fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// A header added to or set on a request: anything but a pseudo-header,
/// except `:authority`/`host`, which rewrite the authority.
pub(super) fn check_request_header_set_name(out: &mut Out, path: &str, name: &str) {
    if name.is_empty() {
        out.err(path, "a header name is empty: name the header to set");
    } else if name.starts_with(':') && !is_authority_header(name) {
        out.err(
            path,
            format!(
                "{name:?} is a pseudo-header, which cannot be changed: remove it (only :authority may be set)"
            ),
        );
    }
}

/// A header removed from a request, or changed on a response.
pub(super) fn check_header_operation_name(out: &mut Out, path: &str, name: &str) {
    if name.is_empty() {
        out.err(path, "a header name is empty: name the header");
    } else if name.eq_ignore_ascii_case("host") {
        out.err(
            path,
            "the Host header cannot be changed here: rewrite the authority with rewrite.authority instead",
        );
    } else if name.starts_with(':') {
        out.err(path, format!("{name:?} is a pseudo-header, which cannot be changed here: remove it"));
    }
}

/// A header value as Envoy reads it: no control characters, and '%' only
/// as "%%" (a literal percent) or around a variable such as
/// "%DOWNSTREAM_REMOTE_ADDRESS%".
pub(super) fn check_header_value(out: &mut Out, path: &str, value: &str) {
    if value.chars().any(|c| (c as u32) < 0x20 && c != '\t' || c == '\u{7f}') {
        out.err(path, "the header value contains control characters (such as a newline): remove them");
        return;
    }
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        let Some(len) = b[i + 1..].iter().position(|&c| c == b'%') else {
            out.err(
                path,
                format!(
                    "header value {value:?} has a lone '%': write \"%%\" for a literal percent sign, or close \
                     the variable, e.g. \"%HOSTNAME%\""
                ),
            );
            return;
        };
        let var = &value[i + 1..i + 1 + len];
        if !var.starts_with(|c: char| c.is_ascii_uppercase() || c == '_') {
            out.err(
                path,
                format!(
                    "header value {value:?} has '%{var}%', which is not an Envoy variable: write \"%%\" for a \
                     literal percent sign"
                ),
            );
            return;
        }
        i += len + 2;
    }
}

// ---------------------------------------------------------------- matches

/// Which of a StringMatch's exclusive fields are set.
pub(super) fn string_match_kinds(m: &StringMatch) -> Vec<&'static str> {
    let mut set = Vec::new();
    if m.exact.is_some() {
        set.push("exact");
    }
    if m.prefix.is_some() {
        set.push("prefix");
    }
    if m.regex.is_some() {
        set.push("regex");
    }
    set
}

/// Istio's `validateStringMatch`: one kind at most, a non-empty prefix
/// (unless `allow_empty_prefix`, as for the URI), a valid regex.
pub(super) fn check_string_match(out: &mut Out, path: &str, m: &StringMatch, allow_empty_prefix: bool) {
    let kinds = string_match_kinds(m);
    if kinds.len() > 1 {
        out.err(
            path,
            format!("{} are all set: use only one of exact, prefix and regex", kinds.join(" and ")),
        );
    }
    if m.prefix.as_deref() == Some("") && !allow_empty_prefix {
        out.err(
            format!("{path}.prefix"),
            "the prefix is empty, which Envoy rejects: give a prefix, or remove the match",
        );
    }
    if let Some(re) = &m.regex {
        check_regex(out, &format!("{path}.regex"), re);
    }
}

/// A light syntax check of an RE2 regular expression: length, balanced
/// groups and classes, repetition operators with something to repeat, and
/// no Perl-only features (look-around, back-references). Full RE2
/// compilation needs a regex engine this crate does not depend on.
pub(super) fn check_regex(out: &mut Out, path: &str, re: &str) {
    if re.is_empty() {
        out.err(path, "the regex is empty: give a pattern, or use exact or prefix");
        return;
    }
    if re.len() > 1024 {
        out.err(path, format!("the regex is {} characters long: keep it within 1024", re.len()));
        return;
    }
    if let Err(problem) = regex_syntax_problem(re) {
        out.err(
            path,
            format!("{re:?} is not a valid RE2 regex ({problem}): fix it; Istio uses RE2 syntax (github.com/google/re2/wiki/Syntax)"),
        );
    }
}

fn regex_syntax_problem(re: &str) -> Result<(), String> {
    let c: Vec<char> = re.chars().collect();
    let mut depth = 0usize;
    // Whether the previous token can be repeated, and whether it already is.
    let mut atom = false;
    let mut repeated = false;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '\\' => {
                let Some(&next) = c.get(i + 1) else { return Err("it ends with a lone backslash".into()) };
                if next.is_ascii_digit() && next != '0' {
                    return Err(format!("back-reference \\{next} is not supported by RE2"));
                }
                i += 2;
                if matches!(next, 'p' | 'P') && c.get(i) == Some(&'{') {
                    while i < c.len() && c[i] != '}' {
                        i += 1;
                    }
                    i += 1;
                }
                atom = true;
                repeated = false;
                continue;
            }
            '[' => {
                let mut j = i + 1;
                if c.get(j) == Some(&'^') {
                    j += 1;
                }
                if c.get(j) == Some(&']') {
                    j += 1;
                }
                loop {
                    match c.get(j) {
                        None => return Err("a '[' is never closed".into()),
                        Some('\\') => j += 2,
                        Some('[') if c.get(j + 1) == Some(&':') => {
                            let close =
                                (j + 2..c.len().saturating_sub(1)).find(|&k| c[k] == ':' && c[k + 1] == ']');
                            j = close.map_or(j + 1, |k| k + 2);
                        }
                        Some(']') => break,
                        Some(_) => j += 1,
                    }
                }
                i = j + 1;
                atom = true;
                repeated = false;
                continue;
            }
            '(' => {
                depth += 1;
                atom = false;
                repeated = false;
                if c.get(i + 1) == Some(&'?') {
                    let rest: String = c[i + 2..].iter().take(2).collect();
                    if rest.starts_with('=') || rest.starts_with('!') || rest == "<=" || rest == "<!" {
                        return Err("look-around assertions are not supported by RE2".into());
                    }
                    // Flags or a group name follow: "(?i)", "(?P<name>".
                    i += 2;
                    continue;
                }
            }
            ')' => {
                if depth == 0 {
                    return Err("a ')' has no matching '('".into());
                }
                depth -= 1;
                atom = true;
                repeated = false;
            }
            '|' => {
                atom = false;
                repeated = false;
            }
            '*' | '+' | '?' | '{' => {
                let len = if c[i] == '{' { repetition_len(&c[i..])? } else { 1 };
                if len == 0 {
                    // A '{' that is not a repetition is a literal.
                    atom = true;
                    repeated = false;
                    i += 1;
                    continue;
                }
                if repeated {
                    if c[i] == '?' {
                        // A lazy quantifier such as "*?".
                        repeated = false;
                        atom = false;
                        i += 1;
                        continue;
                    }
                    return Err(format!("repetition operator '{}' follows another one", c[i]));
                }
                if !atom {
                    return Err(format!("repetition operator '{}' has nothing to repeat", c[i]));
                }
                repeated = true;
                i += len;
                continue;
            }
            '^' | '$' => {
                atom = false;
                repeated = false;
            }
            _ => {
                atom = true;
                repeated = false;
            }
        }
        i += 1;
    }
    if depth > 0 { Err("a '(' is never closed".into()) } else { Ok(()) }
}

/// The length of a `{n}`, `{n,}` or `{n,m}` repetition at the start of
/// `c`, 0 when it is a literal '{'.
fn repetition_len(c: &[char]) -> Result<usize, String> {
    let Some(close) = c.iter().position(|&x| x == '}') else { return Ok(0) };
    let inner: String = c[1..close].iter().collect();
    let (lo, hi) = match inner.split_once(',') {
        Some((lo, hi)) => (lo, Some(hi)),
        None => (inner.as_str(), None),
    };
    let Ok(lo) = lo.parse::<u32>() else { return Ok(0) };
    let hi = match hi {
        None => Some(lo),
        Some("") => None,
        Some(h) => match h.parse::<u32>() {
            Ok(h) => Some(h),
            Err(_) => return Ok(0),
        },
    };
    if lo > 1000 || hi.is_some_and(|h| h > 1000 || h < lo) {
        return Err(format!("repetition {{{inner}}} is invalid (counts go up to 1000, low before high)"));
    }
    Ok(close + 1)
}

// ---------------------------------------------------------------- exportTo

/// Istio's `validateExportTo`: ".", "*" or namespace names, no duplicates
/// ("." counts as this namespace), "*" alone, and a DestinationRule with a
/// workload selector exported to its own namespace only.
pub(super) fn check_export_to(out: &mut Out, namespace: &str, export_to: &[String], dr_with_selector: bool) {
    // Namespace named -> the entry that named it.
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, e) in export_to.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        let key = if e == "." { namespace } else { e.as_str() };
        if let Some(first) = seen.get(key) {
            if first != e {
                out.err(
                    path,
                    format!("{first:?} and {e:?} both mean this namespace ({namespace}): remove one"),
                );
            } else {
                out.err(path, format!("{e:?} is listed twice: remove the duplicate"));
            }
            continue;
        }
        if e == "~" {
            out.err(
                path,
                "\"~\" (export to no one) is only for ServiceEntries: use \".\" to keep it in this namespace",
            );
        } else if e != "." && e != "*" && !is_dns1123_label(e) {
            out.err(path, format!("{e:?} is not \".\", \"*\" or a namespace name: use one of those"));
        } else {
            seen.insert(key, e);
        }
    }
    if dr_with_selector && !seen.is_empty() {
        if !seen.contains_key(namespace) {
            out.err(
                "spec.exportTo",
                "a DestinationRule with a workloadSelector applies in its own namespace only: set exportTo to [\".\"]",
            );
        } else if seen.len() > 1 {
            out.err(
                "spec.exportTo",
                "a DestinationRule with a workloadSelector cannot be exported to other namespaces: set exportTo to [\".\"]",
            );
        }
    }
    if seen.contains_key("*") && export_to.len() > 1 {
        out.err(
            "spec.exportTo",
            "\"*\" already exports to every namespace: list \"*\" alone, or only namespaces",
        );
    }
}

// ----------------------------------------------------------- gateway names

/// Istio's `validateGatewayNames`: `mesh`, `name`, or `namespace/name`
/// with DNS-label parts; the legacy `name.namespace` form is a warning.
pub(super) fn check_gateway_names(out: &mut Out, path: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let path = format!("{path}[{i}]");
        match name.split_once('/') {
            None => {
                if let Some((gw, ns)) = name.split_once('.') {
                    let ns = ns.split('.').next().unwrap_or(ns);
                    out.warn(
                        &path,
                        format!(
                            "{name:?} uses the legacy name.namespace form: write \"{ns}/{gw}\" (namespace/name)"
                        ),
                    );
                }
                if let Err(e) = check_fqdn(name) {
                    out.err(
                        path,
                        format!("gateway name {name:?} is invalid ({e}): write \"namespace/name\", \"name\" or \"mesh\""),
                    );
                }
            }
            Some((ns, gw)) => {
                if ns.is_empty() || gw.is_empty() {
                    out.err(
                        path,
                        format!("{name:?} has an empty namespace or name: write \"namespace/name\""),
                    );
                } else {
                    if !is_dns1123_label(ns) {
                        out.err(&path, format!("{ns:?} is not a namespace name: write \"namespace/name\""));
                    }
                    if !is_dns1123_label(gw) {
                        out.err(
                            &path,
                            format!(
                                "{gw:?} is not a valid gateway name (a DNS label): write \"namespace/name\""
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// A policy's workload selector labels: no empty keys, no wildcards, valid
/// Kubernetes labels; none at all selects every workload (of the mesh in
/// the root namespace), which is worth a warning.
pub(super) fn check_selector_labels(labels: &BTreeMap<String, String>, in_root: bool, out: &mut Out) {
    for (k, v) in labels {
        if k.is_empty() {
            out.err("spec.selector.matchLabels", "a label key is empty: give every label a key");
        }
        if k.contains('*') || v.contains('*') {
            out.err(
                key("spec.selector.matchLabels", k),
                format!("wildcards are not supported in selectors ({k}={v}): list exact label values"),
            );
        }
    }
    // The rest as Kubernetes labels; the two above have their own message.
    let plain = labels
        .iter()
        .filter(|(k, v)| !k.is_empty() && !k.contains('*') && !v.contains('*'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_labels(out, "spec.selector.matchLabels", &plain);
    if labels.is_empty() {
        let scope = if in_root { "the whole mesh" } else { "every workload of the namespace" };
        out.warn(
            "spec.selector.matchLabels",
            format!(
                "the selector has no labels, so the policy applies to {scope}, as if it had no selector: \
                 add matchLabels, or remove the selector"
            ),
        );
    }
}

// ------------------------------------------- ports, protocols, listeners

/// The protocols a Gateway, ServiceEntry or Sidecar port may name, as
/// Istio parses them (any case).
pub(super) const PROTOCOLS: &str = "HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, MYSQL or REDIS";

/// A port's protocol: required, and one Istio knows.
pub(super) fn check_protocol(out: &mut Out, path: &str, protocol: Option<&str>) {
    match protocol {
        None | Some("") => out.err(path, format!("the protocol is required: set one of {PROTOCOLS}")),
        Some(p) if crate::model::protocol::Protocol::parse(p).is_none() => {
            out.err(path, format!("protocol {p:?} is not one Istio knows: use one of {PROTOCOLS}"))
        }
        Some(_) => {}
    }
}

/// Istio's prefix for a listener bound to a Unix domain socket.
pub(super) const UNIX_PREFIX: &str = "unix://";

/// A `unix://` address: an absolute path, or `@` for an abstract socket.
pub(super) fn check_unix_address(out: &mut Out, path: &str, address: &str) {
    let socket = address.strip_prefix(UNIX_PREFIX).unwrap_or(address);
    if socket.is_empty() || !(socket.starts_with('/') || socket.starts_with('@')) {
        out.err(
            path,
            format!("{address:?} is not a Unix socket address: write unix:// and an absolute path, e.g. \"unix:///var/run/app.sock\""),
        );
    } else if socket.len() > 107 {
        out.err(
            path,
            format!("the socket path of {address:?} is longer than 107 characters: use a shorter path"),
        );
    }
}

/// A host with a namespace in front, `namespace/host`, as a Gateway
/// server's or a Sidecar egress listener's hosts write it. The namespace is
/// `*`, `.`, a namespace name, or (Sidecar only) `~`; the host `*` or a DNS
/// name with an optional leading wildcard. A Gateway may leave the
/// namespace out.
pub(super) fn check_namespaced_host(out: &mut Out, path: &str, value: &str, sidecar: bool) {
    let (namespace, host) = match value.split_once('/') {
        Some((ns, host)) => (Some(ns), host),
        None if sidecar => {
            return out.err(
                path,
                format!(
                    "{value:?} has no namespace: write namespace/host, e.g. \"*/{value}\" (any namespace) or \
                     \"./{value}\" (this one)"
                ),
            );
        }
        None => (None, value),
    };
    if let Some(ns) = namespace {
        let tilde_ok = sidecar && ns == "~";
        if !(ns == "*" || ns == "." || tilde_ok || is_dns1123_label(ns)) {
            let choices = if sidecar {
                "\"*\", \".\", \"~\" or a namespace name"
            } else {
                "\"*\", \".\" or a namespace name"
            };
            out.err(path, format!("namespace {ns:?} of {value:?} is not valid: use {choices}"));
        }
    }
    if host.contains('/') {
        return out.err(path, format!("{value:?} has more than one '/': write namespace/host"));
    }
    if host != "*" {
        if let Err(e) = check_wildcard_domain(host) {
            out.err(path, format!("host {host:?} is not valid ({e}): {HOST_FIX}"));
        }
    }
}
