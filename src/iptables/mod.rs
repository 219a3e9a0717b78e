//! `mesh iptables`: the init container that makes a pod's TCP traffic go
//! through its Envoy sidecar, like Istio's istio-init (`istio-iptables`).
//!
//! The sidecar injector adds it to each pod with the flags taken
//! from Istio's `traffic.sidecar.istio.io/*` annotations. It runs once, in the
//! pod's network namespace, before any other container:
//! [`capture`] validates the flags, [`rules`] turns them into nat table rules
//! (pure, with Istio's chain names), and [`apply`] installs them with
//! `iptables-restore`.
//!
//! IPv4 only: the rules go to `iptables`, and IPv6 ranges in the flags are
//! rejected rather than ignored. Istio's TPROXY mode, DNS capture and HBONE
//! tunnel port are not supported.

pub mod apply;
pub mod capture;
pub mod rules;

use std::io::Write;

pub use apply::{CommandOutput, Error, ProcessRunner, Runner, apply, clean};
pub use capture::{Capture, FlagError, Ipv4Cidr, Selection};
pub use rules::nat_rules;

/// The flags of `mesh iptables`. List flags take Istio's annotation syntax:
/// comma-separated, spaces allowed, `""` for none.
#[derive(clap::Args, Debug, Clone)]
pub struct IptablesArgs {
    /// The uid Envoy runs as; its own traffic is never captured.
    #[arg(long, value_name = "UID", default_value = "1337")]
    pub proxy_uid: String,

    /// The gid Envoy runs as; its own traffic is never captured.
    #[arg(long, value_name = "GID", default_value = "1337")]
    pub proxy_gid: String,

    /// Envoy's outbound capture port: outbound connections are redirected here.
    #[arg(long, value_name = "PORT", default_value = "15001")]
    pub outbound_port: String,

    /// Envoy's inbound capture port: inbound connections are redirected here.
    #[arg(long, value_name = "PORT", default_value = "15006")]
    pub inbound_port: String,

    /// Destinations whose outbound traffic is captured: IPv4 CIDRs, or "*" for all.
    #[arg(long, value_name = "CIDRS", default_value = "*")]
    pub include_outbound_ip_ranges: String,

    /// Destinations whose outbound traffic is never captured: IPv4 CIDRs.
    #[arg(long, value_name = "CIDRS", default_value = "")]
    pub exclude_outbound_ip_ranges: String,

    /// Inbound ports captured, or "*" for all; "" turns inbound capture off.
    #[arg(long, value_name = "PORTS", default_value = "*")]
    pub include_inbound_ports: String,

    /// Inbound ports never captured when --include-inbound-ports is "*". The
    /// default keeps Envoy's metrics (15090), health (15021) and agent (15020)
    /// ports reachable; a value replaces it, so keep them in the list.
    #[arg(long, value_name = "PORTS", default_value = "15090,15021,15020")]
    pub exclude_inbound_ports: String,

    /// Outbound destination ports never captured.
    #[arg(long, value_name = "PORTS", default_value = "")]
    pub exclude_outbound_ports: String,

    /// Print the rules in iptables-restore format and change nothing.
    #[arg(long, conflicts_with = "clean")]
    pub dry_run: bool,

    /// Remove everything this command installs, and nothing else.
    #[arg(long)]
    pub clean: bool,
}

/// The `mesh iptables` command. Writes the rules it installs and the
/// resulting nat table to stdout, where `kubectl logs -c <init container>` finds them.
pub fn run(args: IptablesArgs) -> anyhow::Result<()> {
    if !args.dry_run {
        // Before touching anything, so the error names the fix rather than
        // showing iptables' "Permission denied".
        apply::check_capabilities()?;
    }
    let stdout = std::io::stdout();
    execute(&args, &ProcessRunner, &mut stdout.lock())?;
    Ok(())
}

/// `run` without the capability check, with the commands and output given.
fn execute(args: &IptablesArgs, runner: &dyn Runner, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.clean {
        clean(runner, out)?;
        return Ok(());
    }
    let capture = Capture::from_args(args)?;
    if args.dry_run {
        out.write_all(nat_rules(&capture).as_bytes())?;
        return Ok(());
    }
    apply(&capture, runner, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: IptablesArgs,
    }

    /// The arguments `mesh iptables <flags>` gets, clap's defaults included.
    pub(crate) fn args(flags: &[&str]) -> IptablesArgs {
        let argv = std::iter::once("mesh-iptables").chain(flags.iter().copied());
        Command::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn dry_run_and_clean_exclude_each_other() {
        let argv = ["mesh-iptables", "--dry-run", "--clean"];
        assert!(Command::try_parse_from(argv).is_err());
    }

    #[test]
    fn bad_flags_fail_before_anything_runs() {
        let nothing = |_: &str, _: &[&str], _: Option<&str>| -> std::io::Result<CommandOutput> {
            panic!("nothing may run with bad flags")
        };
        let error = execute(&args(&["--inbound-port", "99999"]), &nothing, &mut Vec::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"--inbound-port: "99999" is out of range (expected a number 1-65535)"#
        );
    }
}
