//! Istio's pod annotations that shape the sidecar, read and checked once, so
//! a bad value is refused at admission with its name and a fix, not found
//! later in a crash-looping init container.

use std::collections::BTreeMap;

use super::InjectError;
use super::settings::InjectArgs;

pub const INJECT: &str = "sidecar.istio.io/inject";
pub const STATUS: &str = "sidecar.istio.io/status";
/// Istio's choice of injection template: `gateway` makes the pod a
/// gateway proxy (`super::GATEWAY_TEMPLATE`), `sidecar` (the default) a sidecar.
pub const TEMPLATES: &str = "inject.istio.io/templates";
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// `"false"` keeps the app's probes as they are (`true`, the default, sends
/// them to Envoy's app-health listener; see `probes`).
pub const REWRITE_PROBES: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// Istio's ProxyConfig for one pod, as YAML; the injector reads its
/// `tracing.sampling` (docs/observe.md) and nothing else of it.
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";

/// Ports of the sidecar itself that inbound capture always leaves alone:
/// 15090 (Prometheus stats), 15021 (health), 15020 (the app's rewritten
/// probes, which must reach Envoy's app-health listener in plaintext).
pub const SIDECAR_PORTS: &str = "15090,15021,15020";

/// Envoy's log levels (`-l`), as Istio accepts them.
const LOG_LEVELS: [&str; 8] = ["trace", "debug", "info", "warning", "warn", "error", "critical", "off"];

/// Everything about the sidecar that a pod may choose.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyOptions {
    pub image: String,
    pub cpu: String,
    pub memory: String,
    pub cpu_limit: String,
    pub memory_limit: String,
    pub log_level: String,
    pub traffic: Traffic,
    /// Rewrite the app's probes to Envoy's app-health listener.
    pub rewrite_probes: bool,
    /// The pod's own share of traced requests, in percent
    /// (`proxy.istio.io/config` `tracing.sampling`).
    pub trace_sampling: Option<f64>,
}

/// What the init container captures, as `mesh iptables` flags take it.
#[derive(Clone, Debug, PartialEq)]
pub struct Traffic {
    pub include_outbound_ip_ranges: String,
    pub exclude_outbound_ip_ranges: String,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub exclude_outbound_ports: String,
}

impl Traffic {
    /// What `mesh iptables` is given, as it parses it.
    pub fn flags(&self) -> crate::iptables::IptablesArgs {
        crate::iptables::IptablesArgs {
            proxy_uid: super::settings::PROXY_UID.to_string(),
            proxy_gid: super::settings::PROXY_UID.to_string(),
            outbound_port: "15001".into(),
            inbound_port: "15006".into(),
            include_outbound_ip_ranges: self.include_outbound_ip_ranges.clone(),
            exclude_outbound_ip_ranges: self.exclude_outbound_ip_ranges.clone(),
            include_inbound_ports: self.include_inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            dry_run: false,
            clean: false,
        }
    }

    /// The arguments of `mesh iptables`: the same flags, on its command line.
    pub fn iptables_args(&self) -> Vec<String> {
        let f = self.flags();
        [
            ("--proxy-uid", f.proxy_uid),
            ("--proxy-gid", f.proxy_gid),
            ("--outbound-port", f.outbound_port),
            ("--inbound-port", f.inbound_port),
            ("--include-outbound-ip-ranges", f.include_outbound_ip_ranges),
            ("--exclude-outbound-ip-ranges", f.exclude_outbound_ip_ranges),
            ("--include-inbound-ports", f.include_inbound_ports),
            ("--exclude-inbound-ports", f.exclude_inbound_ports),
            ("--exclude-outbound-ports", f.exclude_outbound_ports),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
    }
}

/// Reads the pod's annotations over the injector's defaults.
pub fn proxy_options(
    annotations: &BTreeMap<String, String>,
    defaults: &InjectArgs,
) -> Result<ProxyOptions, InjectError> {
    let get = |key: &str| annotations.get(key).map(|v| v.trim().to_string());
    let quantity = |key: &str, default: &str, what: &str| -> Result<String, InjectError> {
        match get(key) {
            None => Ok(default.to_string()),
            Some(v) if is_quantity(&v) => Ok(v),
            Some(v) => Err(InjectError::annotation(
                key,
                &v,
                &format!("is not a {what} quantity (examples: 100m, 0.5, 128Mi, 1Gi)"),
            )),
        }
    };
    let log_level = match get(LOG_LEVEL) {
        None => defaults.proxy_log_level.clone(),
        Some(v) if LOG_LEVELS.contains(&v.as_str()) => v,
        Some(v) => {
            return Err(InjectError::annotation(
                LOG_LEVEL,
                &v,
                &format!("is not a log level (one of {})", LOG_LEVELS.join(", ")),
            ));
        }
    };
    let image = match get(PROXY_IMAGE) {
        None => defaults.proxy_image.clone(),
        Some(v) if !v.is_empty() && !v.contains(char::is_whitespace) => v,
        Some(v) => return Err(InjectError::annotation(PROXY_IMAGE, &v, "is not an image reference")),
    };
    let exclude_inbound = match get(EXCLUDE_INBOUND_PORTS) {
        Some(v) if !v.is_empty() => format!("{SIDECAR_PORTS},{v}"),
        _ => SIDECAR_PORTS.to_string(),
    };
    let traffic = Traffic {
        include_outbound_ip_ranges: get(INCLUDE_OUTBOUND_IP_RANGES).unwrap_or_else(|| "*".into()),
        exclude_outbound_ip_ranges: get(EXCLUDE_OUTBOUND_IP_RANGES).unwrap_or_default(),
        include_inbound_ports: get(INCLUDE_INBOUND_PORTS).unwrap_or_else(|| "*".into()),
        exclude_inbound_ports: exclude_inbound,
        exclude_outbound_ports: get(EXCLUDE_OUTBOUND_PORTS).unwrap_or_default(),
    };
    traffic.check(annotations)?;
    // Go's strconv.ParseBool, as Istio reads this annotation.
    let rewrite_probes = match get(REWRITE_PROBES).as_deref() {
        None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
        Some(v) => return Err(InjectError::annotation(REWRITE_PROBES, v, "is not \"true\" or \"false\"")),
    };
    let trace_sampling = match get(PROXY_CONFIG) {
        None => None,
        Some(config) => trace_sampling(&config)?,
    };
    Ok(ProxyOptions {
        image,
        cpu: quantity(PROXY_CPU, &defaults.proxy_cpu, "CPU")?,
        memory: quantity(PROXY_MEMORY, &defaults.proxy_memory, "memory")?,
        cpu_limit: quantity(PROXY_CPU_LIMIT, &defaults.proxy_cpu_limit, "CPU")?,
        memory_limit: quantity(PROXY_MEMORY_LIMIT, &defaults.proxy_memory_limit, "memory")?,
        log_level,
        traffic,
        rewrite_probes,
        trace_sampling,
    })
}

/// `tracing.sampling` of a pod's ProxyConfig (YAML), checked.
fn trace_sampling(config: &str) -> Result<Option<f64>, InjectError> {
    let refuse = |problem: String| InjectError::annotation(PROXY_CONFIG, config, &problem);
    let config: serde_json::Value =
        serde_yaml_ng::from_str(config).map_err(|e| refuse(format!("is not YAML: {e}")))?;
    let sampling = &config["tracing"]["sampling"];
    if sampling.is_null() {
        return Ok(None);
    }
    let percent =
        sampling.as_f64().ok_or_else(|| refuse("has a tracing.sampling that is not a number".to_string()))?;
    crate::model::telemetry::check_sampling(percent).map_err(refuse)?;
    Ok(Some(percent))
}

impl Traffic {
    /// Validates the flags exactly as the init container will, so a value
    /// it would refuse is refused now, naming the annotation it came from.
    fn check(&self, annotations: &BTreeMap<String, String>) -> Result<(), InjectError> {
        let Err(e) = crate::iptables::Capture::from_args(&self.flags()) else { return Ok(()) };
        let key = match e.flag {
            "include-outbound-ip-ranges" => INCLUDE_OUTBOUND_IP_RANGES,
            "exclude-outbound-ip-ranges" => EXCLUDE_OUTBOUND_IP_RANGES,
            "include-inbound-ports" => INCLUDE_INBOUND_PORTS,
            "exclude-inbound-ports" => EXCLUDE_INBOUND_PORTS,
            "exclude-outbound-ports" => EXCLUDE_OUTBOUND_PORTS,
            _ => return Err(InjectError::Invalid(e.to_string())),
        };
        let value = annotations.get(key).map(String::as_str).unwrap_or_default();
        Err(InjectError::annotation(key, value, &format!("cannot be used ({e})")))
    }
}

/// A Kubernetes resource quantity: a decimal number with an optional
/// SI/binary suffix or exponent (`100m`, `1.5`, `128Mi`, `1e3`).
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let valid_number =
        !number.is_empty() && number.matches('.').count() <= 1 && number.chars().any(|c| c.is_ascii_digit());
    let valid_suffix = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| {
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
        })
        .unwrap_or(false);
    valid_number && valid_suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the init container is given on its command line parses, with
    /// clap, into exactly the flags that were checked at admission.
    #[test]
    fn the_checked_flags_are_the_command_line() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flags: crate::iptables::IptablesArgs,
        }
        let o = options(&[(EXCLUDE_OUTBOUND_PORTS, "5432"), (INCLUDE_OUTBOUND_IP_RANGES, "")]).unwrap();
        let argv = std::iter::once("iptables".to_string()).chain(o.traffic.iptables_args());
        let parsed = <Cli as clap::Parser>::try_parse_from(argv).unwrap().flags;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", o.traffic.flags()));
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "0.5", "1", "128Mi", "1Gi", "2", "1e3", "1.5k", "+1"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "100 m", "12MB", "abc", "1e", "-"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    fn options(pairs: &[(&str, &str)]) -> Result<ProxyOptions, InjectError> {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        proxy_options(&map, &InjectArgs::default())
    }

    #[test]
    fn defaults_without_annotations() {
        let o = options(&[]).unwrap();
        assert_eq!(o.image, super::super::settings::DEFAULT_PROXY_IMAGE);
        assert_eq!((o.cpu.as_str(), o.memory.as_str()), ("100m", "128Mi"));
        assert_eq!(o.traffic.include_outbound_ip_ranges, "*");
        assert_eq!(o.traffic.include_inbound_ports, "*");
        assert_eq!(o.traffic.exclude_inbound_ports, SIDECAR_PORTS);
        assert!(o.rewrite_probes, "probes are rewritten unless the pod says no, as in Istio");
    }

    #[test]
    fn annotations_override_and_inbound_exclusions_add_up() {
        let o = options(&[
            (PROXY_CPU, "250m"),
            (LOG_LEVEL, "debug"),
            (EXCLUDE_INBOUND_PORTS, "8081, 8082"),
            (INCLUDE_OUTBOUND_IP_RANGES, "10.96.0.0/12"),
        ])
        .unwrap();
        assert_eq!(o.cpu, "250m");
        assert_eq!(o.log_level, "debug");
        assert_eq!(o.traffic.exclude_inbound_ports, "15090,15021,15020,8081, 8082");
        assert_eq!(o.traffic.include_outbound_ip_ranges, "10.96.0.0/12");
        assert!(!options(&[(REWRITE_PROBES, "false")]).unwrap().rewrite_probes);
        assert!(options(&[(REWRITE_PROBES, " true ")]).unwrap().rewrite_probes);
    }

    #[test]
    fn bad_values_name_the_annotation_and_value() {
        let e = options(&[(PROXY_MEMORY, "12MB")]).unwrap_err().to_string();
        assert!(e.contains(PROXY_MEMORY) && e.contains("\"12MB\""), "{e}");
        let e = options(&[(LOG_LEVEL, "loud")]).unwrap_err().to_string();
        assert!(e.contains("loud") && e.contains("warning"), "{e}");
        let e = options(&[(EXCLUDE_OUTBOUND_PORTS, "80a")]).unwrap_err().to_string();
        assert!(e.contains(EXCLUDE_OUTBOUND_PORTS) && e.contains("80a"), "{e}");
        let e = options(&[(EXCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33")]).unwrap_err().to_string();
        assert!(e.contains(EXCLUDE_OUTBOUND_IP_RANGES), "{e}");
        let e = options(&[(REWRITE_PROBES, "no")]).unwrap_err().to_string();
        assert!(e.contains(REWRITE_PROBES) && e.contains("\"no\""), "{e}");
    }
}
