//! Which traffic the sidecar captures: the flags of `mesh iptables`, parsed and
//! validated into a [`Capture`] that [`super::rules`] turns into iptables rules.
//!
//! The flag values come straight from Istio's pod annotations
//! (`traffic.sidecar.istio.io/includeOutboundIPRanges` and friends), so this
//! accepts what Istio accepts there: comma-separated lists, spaces around the
//! commas, `*` for "everything" where Istio allows it, and the empty string for
//! "nothing". Anything else is an error that names the flag and the value;
//! nothing is dropped silently. The injector validates the annotations with
//! [`Capture::from_args`] too, so a pod is rejected at admission rather than
//! stuck in its init container.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::IptablesArgs;

/// A flag whose value cannot be used: which flag (without `--`), what is
/// wrong with the value, and what is expected instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {problem} (expected {expected})")]
pub struct FlagError {
    pub flag: &'static str,
    pub problem: String,
    pub expected: &'static str,
}

/// A bad value before it is known which flag it came from.
struct ValueError {
    problem: String,
    expected: &'static str,
}

/// Everything, or exactly the listed items (possibly none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<T> {
    All,
    Only(Vec<T>),
}

impl<T> Selection<T> {
    /// True when the selection matches nothing at all.
    pub fn is_empty(&self) -> bool {
        matches!(self, Selection::Only(items) if items.is_empty())
    }
}

/// An IPv4 network in CIDR notation, with the host bits cleared the way
/// iptables stores it (`10.1.2.3/8` becomes `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
        Some(Ipv4Cidr { network: Ipv4Addr::from(u32::from(address) & mask), prefix_len })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether the network starts in 127.0.0.0/8, the way Istio decides that
    /// a user asked for loopback traffic to be captured.
    pub fn is_loopback(&self) -> bool {
        self.network.is_loopback()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// The validated capture configuration. IPv4 only: rules go to `iptables`,
/// never `ip6tables`, and IPv6 ranges in the flags are rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Traffic of this uid and gid (the Envoy sidecar) is never captured, or
    /// Envoy would loop into itself.
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// Envoy's outbound listener (`virtualOutbound`).
    pub outbound_port: u16,
    /// Envoy's inbound listener (`virtualInbound`).
    pub inbound_port: u16,
    /// Destination ports of inbound connections sent to Envoy; none turns
    /// inbound capture off.
    pub inbound_ports: Selection<u16>,
    /// Inbound ports left alone. Like Istio, this only applies when
    /// `inbound_ports` is `All`: a port list already says exactly what is captured.
    pub inbound_ports_excluded: Vec<u16>,
    /// Destinations of outbound connections sent to Envoy.
    pub outbound_ranges: Selection<Ipv4Cidr>,
    pub outbound_ranges_excluded: Vec<Ipv4Cidr>,
    pub outbound_ports_excluded: Vec<u16>,
}

impl Capture {
    /// Parses and validates the flags; the first bad value is the error.
    pub fn from_args(args: &IptablesArgs) -> Result<Self, FlagError> {
        fn flag<T>(flag: &'static str, parsed: Result<T, ValueError>) -> Result<T, FlagError> {
            parsed.map_err(|ValueError { problem, expected }| FlagError { flag, problem, expected })
        }
        Ok(Capture {
            proxy_uid: flag("proxy-uid", parse_id(&args.proxy_uid))?,
            proxy_gid: flag("proxy-gid", parse_id(&args.proxy_gid))?,
            outbound_port: flag("outbound-port", parse_port(&args.outbound_port))?,
            inbound_port: flag("inbound-port", parse_port(&args.inbound_port))?,
            inbound_ports: flag("include-inbound-ports", parse_ports(&args.include_inbound_ports))?,
            inbound_ports_excluded: flag("exclude-inbound-ports", port_list(&args.exclude_inbound_ports))?,
            outbound_ranges: flag(
                "include-outbound-ip-ranges",
                parse_ip_ranges(&args.include_outbound_ip_ranges),
            )?,
            // Excluding everything is spelled --include-outbound-ip-ranges="",
            // so "*" is refused here, as Istio refuses it.
            outbound_ranges_excluded: flag(
                "exclude-outbound-ip-ranges",
                range_list(&args.exclude_outbound_ip_ranges),
            )?,
            outbound_ports_excluded: flag("exclude-outbound-ports", port_list(&args.exclude_outbound_ports))?,
        })
    }

    /// Whether any inbound traffic is redirected to Envoy.
    pub fn captures_inbound(&self) -> bool {
        !self.inbound_ports.is_empty()
    }
}

const PORTS_OR_ALL: &str = "comma-separated numbers 1-65535 or \"*\"";
const PORTS: &str = "comma-separated numbers 1-65535";
const CIDRS_OR_ALL: &str = "comma-separated IPv4 CIDRs like 10.0.0.0/8, or \"*\"";
const CIDRS: &str = "comma-separated IPv4 CIDRs like 10.0.0.0/8";

/// A list of ports, or `*` for all of them (`includeInboundPorts`).
fn parse_ports(value: &str) -> Result<Selection<u16>, ValueError> {
    selection(value, PORTS_OR_ALL, port)
}

/// A list of IPv4 CIDRs, or `*` for all addresses (`includeOutboundIPRanges`).
fn parse_ip_ranges(value: &str) -> Result<Selection<Ipv4Cidr>, ValueError> {
    selection(value, CIDRS_OR_ALL, cidr)
}

/// A list of ports where `*` makes no sense (the exclusions).
fn port_list(value: &str) -> Result<Vec<u16>, ValueError> {
    list(value, |item| {
        no_wildcard(item, PORTS)?;
        port(item, PORTS)
    })
}

fn range_list(value: &str) -> Result<Vec<Ipv4Cidr>, ValueError> {
    list(value, |item| {
        no_wildcard(item, CIDRS)?;
        cidr(item, CIDRS)
    })
}

fn invalid(problem: String, expected: &'static str) -> ValueError {
    ValueError { problem, expected }
}

/// Splits a comma-separated value, tolerating spaces and empty items (a
/// trailing comma), keeping the first of any repeated item.
fn list<T: PartialEq>(
    value: &str,
    parse: impl Fn(&str) -> Result<T, ValueError>,
) -> Result<Vec<T>, ValueError> {
    let mut items = Vec::new();
    for item in value.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let parsed = parse(item)?;
        if !items.contains(&parsed) {
            items.push(parsed);
        }
    }
    Ok(items)
}

/// `*` alone means everything; otherwise a list, where `*` is a mistake.
fn selection<T: PartialEq>(
    value: &str,
    expected: &'static str,
    parse: impl Fn(&str, &'static str) -> Result<T, ValueError>,
) -> Result<Selection<T>, ValueError> {
    if value.trim() == "*" {
        return Ok(Selection::All);
    }
    list(value, |item| {
        if item == "*" {
            return Err(invalid(format!("{value:?} mixes \"*\" with other values"), expected));
        }
        parse(item, expected)
    })
    .map(Selection::Only)
}

fn no_wildcard(item: &str, expected: &'static str) -> Result<(), ValueError> {
    if item == "*" {
        return Err(invalid("\"*\" is not allowed here".to_string(), expected));
    }
    Ok(())
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

fn port(item: &str, expected: &'static str) -> Result<u16, ValueError> {
    if !is_number(item) {
        return Err(invalid(format!("{item:?} is not a port"), expected));
    }
    match item.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(invalid(format!("{item:?} is out of range"), expected)),
    }
}

fn parse_port(value: &str) -> Result<u16, ValueError> {
    port(value.trim(), "a number 1-65535")
}

fn parse_id(value: &str) -> Result<u32, ValueError> {
    let value = value.trim();
    let expected = "a numeric id 0-4294967295, e.g. 1337";
    if !is_number(value) {
        return Err(invalid(format!("{value:?} is not a number"), expected));
    }
    value.parse().map_err(|_| invalid(format!("{value:?} is out of range"), expected))
}

fn cidr(item: &str, expected: &'static str) -> Result<Ipv4Cidr, ValueError> {
    let (address, prefix_len) = match item.split_once('/') {
        Some((address, prefix_len)) => (address, Some(prefix_len)),
        None => (item, None),
    };
    if address.parse::<Ipv6Addr>().is_ok() {
        return Err(invalid(
            format!("{item:?} is an IPv6 range; mesh iptables configures IPv4 only"),
            expected,
        ));
    }
    let Ok(address) = address.parse::<Ipv4Addr>() else {
        return Err(invalid(format!("{item:?} is not an IPv4 CIDR"), expected));
    };
    let Some(prefix_len) = prefix_len else {
        return Err(invalid(
            format!("{item:?} has no prefix length (for one address write {item}/32)"),
            expected,
        ));
    };
    Some(prefix_len)
        .filter(|text| is_number(text))
        .and_then(|text| text.parse::<u8>().ok())
        .and_then(|prefix_len| Ipv4Cidr::new(address, prefix_len))
        .ok_or_else(|| invalid(format!("{item:?} has a bad prefix length (must be 0-32)"), expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::tests::args;

    fn cidr(text: &str) -> Ipv4Cidr {
        let (address, prefix_len) = text.split_once('/').unwrap();
        Ipv4Cidr::new(address.parse().unwrap(), prefix_len.parse().unwrap()).unwrap()
    }

    fn capture(flags: &[&str]) -> Result<Capture, FlagError> {
        Capture::from_args(&args(flags))
    }

    fn rejects(flags: &[&str]) -> String {
        capture(flags).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let capture = capture(&[]).unwrap();
        assert_eq!(
            capture,
            Capture {
                proxy_uid: 1337,
                proxy_gid: 1337,
                outbound_port: 15001,
                inbound_port: 15006,
                inbound_ports: Selection::All,
                inbound_ports_excluded: vec![15090, 15021, 15020],
                outbound_ranges: Selection::All,
                outbound_ranges_excluded: vec![],
                outbound_ports_excluded: vec![],
            }
        );
        assert!(capture.captures_inbound());
    }

    #[test]
    fn lists_tolerate_spaces_empty_items_and_repeats() {
        let capture = capture(&[
            "--include-inbound-ports",
            " 8080 , 9090,,8080, ",
            "--exclude-outbound-ip-ranges",
            "10.0.0.0/8, 192.168.1.7/16",
            "--include-outbound-ip-ranges",
            " * ",
        ])
        .unwrap();
        assert_eq!(capture.inbound_ports, Selection::Only(vec![8080, 9090]));
        assert_eq!(capture.outbound_ranges_excluded, vec![cidr("10.0.0.0/8"), cidr("192.168.0.0/16")]);
        assert_eq!(capture.outbound_ranges, Selection::All);
    }

    #[test]
    fn empty_means_none() {
        let capture = capture(&[
            "--include-inbound-ports",
            "",
            "--include-outbound-ip-ranges",
            " ",
            "--exclude-inbound-ports",
            "",
        ])
        .unwrap();
        assert_eq!(capture.inbound_ports, Selection::Only(vec![]));
        assert!(!capture.captures_inbound());
        assert!(capture.outbound_ranges.is_empty());
        assert!(capture.inbound_ports_excluded.is_empty());
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("1.2.3.4/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("1.2.3.4/32").to_string(), "1.2.3.4/32");
        assert_eq!(Ipv4Cidr::new(Ipv4Addr::LOCALHOST, 33), None);
    }

    #[test]
    fn bad_ports() {
        assert_eq!(
            rejects(&["--exclude-inbound-ports", "15090,80a"]),
            r#"--exclude-inbound-ports: "80a" is not a port (expected comma-separated numbers 1-65535)"#
        );
        assert_eq!(
            rejects(&["--include-inbound-ports", "0"]),
            r#"--include-inbound-ports: "0" is out of range (expected comma-separated numbers 1-65535 or "*")"#
        );
        assert_eq!(
            rejects(&["--exclude-outbound-ports", "65536"]),
            r#"--exclude-outbound-ports: "65536" is out of range (expected comma-separated numbers 1-65535)"#
        );
        assert_eq!(
            rejects(&["--exclude-outbound-ports=-1"]),
            r#"--exclude-outbound-ports: "-1" is not a port (expected comma-separated numbers 1-65535)"#
        );
        assert_eq!(
            rejects(&["--include-inbound-ports", "80,*"]),
            r#"--include-inbound-ports: "80,*" mixes "*" with other values (expected comma-separated numbers 1-65535 or "*")"#
        );
        assert_eq!(
            rejects(&["--exclude-inbound-ports", "*"]),
            r#"--exclude-inbound-ports: "*" is not allowed here (expected comma-separated numbers 1-65535)"#
        );
        assert_eq!(
            rejects(&["--outbound-port", "0"]),
            r#"--outbound-port: "0" is out of range (expected a number 1-65535)"#
        );
        assert_eq!(
            rejects(&["--inbound-port", "http"]),
            r#"--inbound-port: "http" is not a port (expected a number 1-65535)"#
        );
    }

    #[test]
    fn bad_ids() {
        assert_eq!(
            rejects(&["--proxy-uid", "istio-proxy"]),
            r#"--proxy-uid: "istio-proxy" is not a number (expected a numeric id 0-4294967295, e.g. 1337)"#
        );
        assert_eq!(
            rejects(&["--proxy-gid", "4294967296"]),
            r#"--proxy-gid: "4294967296" is out of range (expected a numeric id 0-4294967295, e.g. 1337)"#
        );
    }

    #[test]
    fn bad_ranges() {
        assert_eq!(
            rejects(&["--include-outbound-ip-ranges", "10.0.0/8"]),
            r#"--include-outbound-ip-ranges: "10.0.0/8" is not an IPv4 CIDR (expected comma-separated IPv4 CIDRs like 10.0.0.0/8, or "*")"#
        );
        assert_eq!(
            rejects(&["--exclude-outbound-ip-ranges", "10.0.0.0/33"]),
            r#"--exclude-outbound-ip-ranges: "10.0.0.0/33" has a bad prefix length (must be 0-32) (expected comma-separated IPv4 CIDRs like 10.0.0.0/8)"#
        );
        assert_eq!(
            rejects(&["--exclude-outbound-ip-ranges", "10.0.0.0/+8"]),
            r#"--exclude-outbound-ip-ranges: "10.0.0.0/+8" has a bad prefix length (must be 0-32) (expected comma-separated IPv4 CIDRs like 10.0.0.0/8)"#
        );
        assert_eq!(
            rejects(&["--exclude-outbound-ip-ranges", "10.1.2.3"]),
            r#"--exclude-outbound-ip-ranges: "10.1.2.3" has no prefix length (for one address write 10.1.2.3/32) (expected comma-separated IPv4 CIDRs like 10.0.0.0/8)"#
        );
        assert_eq!(
            rejects(&["--include-outbound-ip-ranges", "10.0.0.0/8,fd00::/8"]),
            r#"--include-outbound-ip-ranges: "fd00::/8" is an IPv6 range; mesh iptables configures IPv4 only (expected comma-separated IPv4 CIDRs like 10.0.0.0/8, or "*")"#
        );
        assert_eq!(
            rejects(&["--exclude-outbound-ip-ranges", "*"]),
            r#"--exclude-outbound-ip-ranges: "*" is not allowed here (expected comma-separated IPv4 CIDRs like 10.0.0.0/8)"#
        );
    }
}
