//! The nat table rules for a [`Capture`], as `iptables-restore` input. Pure:
//! [`super::apply`] feeds this text to `iptables-restore --noflush`, and
//! `--dry-run` prints it.
//!
//! The chains and rules are Istio's (istio-init), so `iptables-save` in a pod
//! looks the way Istio users expect. The text is written in the canonical form
//! `iptables-save` prints (chains in order, options in its order, `-m tcp`
//! spelled out), so the dry run and the live table can be compared line by line.

use std::fmt::Write as _;

use super::capture::{Capture, Selection};

/// Sends inbound connections on to [`INBOUND_REDIRECT`], or lets them pass.
pub const INBOUND: &str = "ISTIO_INBOUND";
/// Redirects to Envoy's inbound listener.
pub const INBOUND_REDIRECT: &str = "ISTIO_IN_REDIRECT";
/// Sends outbound connections on to [`OUTBOUND_REDIRECT`], or lets them pass.
pub const OUTBOUND: &str = "ISTIO_OUTPUT";
/// Redirects to Envoy's outbound listener.
pub const OUTBOUND_REDIRECT: &str = "ISTIO_REDIRECT";

/// The chains this tool owns, in the order `iptables-save` lists them.
pub const CHAINS: [&str; 4] = [INBOUND, INBOUND_REDIRECT, OUTBOUND, OUTBOUND_REDIRECT];

/// Envoy's inbound passthrough cluster connects to the application from this
/// address, so those connections must not be captured a second time.
const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6/32";
const LOCALHOST: &str = "127.0.0.1/32";

/// The `iptables-restore` input (table `nat`) that installs `capture`.
///
/// Restored with `--noflush`, the chain declarations empty this tool's chains
/// and leave every other chain alone; the jumps from `PREROUTING` and `OUTPUT`
/// are appended, so the caller removes old ones first.
pub fn nat_rules(capture: &Capture) -> String {
    let mut prerouting = Vec::new();
    let mut output = Vec::new();
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();

    if capture.captures_inbound() {
        prerouting.push(format!("-p tcp -j {INBOUND}"));
        match &capture.inbound_ports {
            Selection::All => {
                for port in &capture.inbound_ports_excluded {
                    inbound.push(format!("-p tcp -m tcp --dport {port} -j RETURN"));
                }
                inbound.push(format!("-p tcp -j {INBOUND_REDIRECT}"));
            }
            Selection::Only(ports) => {
                for port in ports {
                    inbound.push(format!("-p tcp -m tcp --dport {port} -j {INBOUND_REDIRECT}"));
                }
            }
        }
    }

    output.push(format!("-p tcp -j {OUTBOUND}"));
    // Before anything else, so an excluded port is never redirected, not even
    // when Envoy calls its own pod.
    for port in &capture.outbound_ports_excluded {
        outbound.push(format!("-p tcp -m tcp --dport {port} -j RETURN"));
    }
    outbound.push(format!("-s {INBOUND_PASSTHROUGH_SOURCE} -o lo -j RETURN"));
    // An outbound range in 127.0.0.0/8 asks for loopback traffic to be captured,
    // so the application's own loopback calls must not be let through early.
    let captures_loopback =
        matches!(&capture.outbound_ranges, Selection::Only(ranges) if ranges.iter().any(|r| r.is_loopback()));
    for (owner, id) in [("uid", capture.proxy_uid), ("gid", capture.proxy_gid)] {
        if capture.captures_inbound() {
            // Envoy calling its own pod's address (an application calling itself
            // through a Service): send it through the inbound listener, so
            // inbound policy applies.
            outbound
                .push(format!("! -d {LOCALHOST} -o lo -m owner --{owner}-owner {id} -j {INBOUND_REDIRECT}"));
        }
        if !captures_loopback {
            // The application calling itself over loopback by pod address.
            outbound.push(format!("-o lo -m owner ! --{owner}-owner {id} -j RETURN"));
        }
        // Envoy's own outbound connections: capturing them would loop.
        outbound.push(format!("-m owner --{owner}-owner {id} -j RETURN"));
    }
    // Applications that talk to localhost mean it (Envoy's admin port, sidecars).
    outbound.push(format!("-d {LOCALHOST} -j RETURN"));
    for range in &capture.outbound_ranges_excluded {
        outbound.push(format!("-d {range} -j RETURN"));
    }
    match &capture.outbound_ranges {
        Selection::All => outbound.push(format!("-j {OUTBOUND_REDIRECT}")),
        Selection::Only(ranges) => {
            for range in ranges {
                outbound.push(format!("-d {range} -j {OUTBOUND_REDIRECT}"));
            }
        }
    }

    let inbound_redirect = vec![format!("-p tcp -j REDIRECT --to-ports {}", capture.inbound_port)];
    let outbound_redirect = vec![format!("-p tcp -j REDIRECT --to-ports {}", capture.outbound_port)];

    let mut text = String::from("*nat\n");
    for chain in CHAINS {
        // Infallible: writing to a String.
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    for (chain, rules) in [
        ("PREROUTING", prerouting),
        ("OUTPUT", output),
        (INBOUND, inbound),
        (INBOUND_REDIRECT, inbound_redirect),
        (OUTBOUND, outbound),
        (OUTBOUND_REDIRECT, outbound_redirect),
    ] {
        for rule in rules {
            let _ = writeln!(text, "-A {chain} {rule}");
        }
    }
    text.push_str("COMMIT\n");
    text
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::iptables::tests::args;

    fn rules(flags: &[&str]) -> String {
        nat_rules(&Capture::from_args(&args(flags)).unwrap())
    }

    /// The ISTIO_OUTPUT rules every configuration has, for uid and gid 1337.
    const OWNER_RULES: &str = "\
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
";

    #[test]
    fn defaults() {
        assert_eq!(
            rules(&[]),
            "\
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"
        );
    }

    #[test]
    fn included_and_excluded_ranges_and_ports() {
        let text = rules(&[
            "--proxy-uid",
            "1000",
            "--proxy-gid",
            "2000",
            "--outbound-port",
            "16001",
            "--inbound-port",
            "16006",
            "--include-inbound-ports",
            "8080, 9090",
            "--exclude-inbound-ports",
            "9090",
            "--include-outbound-ip-ranges",
            "10.96.0.0/12,192.168.0.0/16",
            "--exclude-outbound-ip-ranges",
            "10.96.0.1/32",
            "--exclude-outbound-ports",
            "3306,5432",
        ]);
        assert_eq!(
            text,
            "\
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp -m tcp --dport 9090 -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006
-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN
-A ISTIO_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1000 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1000 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1000 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 2000 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 2000 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 2000 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.96.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 192.168.0.0/16 -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001
COMMIT
"
        );
    }

    #[test]
    fn no_inbound_ports_means_no_inbound_capture() {
        let text = rules(&["--include-inbound-ports", ""]);
        assert!(!text.contains("-A PREROUTING"), "{text}");
        assert!(!text.contains("-A ISTIO_INBOUND"), "{text}");
        assert!(!text.contains("-j ISTIO_IN_REDIRECT"), "{text}");
        // The chain and its redirect stay, so every configuration has the same chains.
        assert!(text.contains(":ISTIO_INBOUND - [0:0]\n"), "{text}");
        assert!(text.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"), "{text}");
    }

    #[test]
    fn no_outbound_ranges_means_no_outbound_redirect() {
        let text = rules(&["--include-outbound-ip-ranges", ""]);
        assert!(!text.contains("-j ISTIO_REDIRECT"), "{text}");
        assert!(text.contains(&format!("{OWNER_RULES}-A ISTIO_REDIRECT ")), "{text}");
    }

    #[test]
    fn wildcard_inbound_ports_apply_exclusions_and_a_port_list_ignores_them() {
        let all = rules(&["--include-inbound-ports", "*", "--exclude-inbound-ports", "22"]);
        assert!(
            all.contains(
                "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n"
            ),
            "{all}"
        );
        let listed = rules(&["--include-inbound-ports", "80", "--exclude-inbound-ports", "22"]);
        assert!(!listed.contains("RETURN\n-A ISTIO_IN_REDIRECT"), "{listed}");
        assert!(!listed.contains("--dport 22"), "{listed}");
    }

    #[test]
    fn a_loopback_range_captures_the_application_calling_itself() {
        let text = rules(&["--include-outbound-ip-ranges", "127.1.2.3/32"]);
        assert!(!text.contains("-o lo -m owner !"), "{text}");
        assert!(text.contains("-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT\n"), "{text}");
    }
}
