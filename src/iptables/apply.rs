//! Installing and removing the rules: the only part of `mesh iptables` that
//! runs programs. Commands go through a [`Runner`], so tests can record them or
//! run them inside a network namespace.
//!
//! The `iptables`, `iptables-save` and `iptables-restore` found on PATH are
//! used as they are; whichever backend they are (nf_tables or legacy) must be
//! the one the node's kube-proxy uses, as it must for Istio.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use super::capture::Capture;
use super::rules::{CHAINS, nat_rules};

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs one program to completion, with `stdin` as its input when given.
pub trait Runner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<CommandOutput>;
}

impl<F> Runner for F
where
    F: Fn(&str, &[&str], Option<&str>) -> io::Result<CommandOutput>,
{
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<CommandOutput> {
        self(program, args, stdin)
    }
}

/// Runs real processes, finding programs on PATH.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRunner;

impl Runner for ProcessRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<CommandOutput> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = std::thread::scope(|scope| {
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // Written from another thread so a chatty child cannot block on
                // a full stdout pipe while we block on its stdin. A write error
                // means the child quit early; its exit status and stderr say why.
                scope.spawn(move || {
                    let _ = pipe.write_all(input.as_bytes());
                });
            }
            child.wait_with_output()
        })?;
        Ok(CommandOutput {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Why installing or removing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{program} was not found on PATH: the init container image needs the iptables package \
         (iptables, iptables-save, iptables-restore)"
    )]
    NotInstalled { program: String },
    #[error("could not run `{command}`: {error}")]
    Spawn { command: String, error: io::Error },
    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    Failed { command: String, status: String, stderr: String, hint: &'static str },
    #[error(
        "mesh iptables needs {missing} in its effective capabilities (CapEff {cap_eff:#x}); \
         add them to the init container with securityContext.capabilities.add: [NET_ADMIN, NET_RAW], \
         or run it as root (runAsUser: 0) with those capabilities"
    )]
    MissingCapabilities { missing: String, cap_eff: u64 },
    #[error("could not read the process capabilities from /proc/self/status: {0}")]
    Capabilities(String),
    #[error("could not write the log: {0}")]
    Log(io::Error),
}

// By hand rather than `#[from]`, which would also make the io::Error the
// source, and `{:#}` would print it twice.
impl From<io::Error> for Error {
    fn from(error: io::Error) -> Self {
        Error::Log(error)
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// Fails, saying what to change, unless this process may change iptables rules.
pub fn check_capabilities() -> Result<(), Error> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| Error::Capabilities(e.to_string()))?;
    let cap_eff = effective_capabilities(&status)
        .ok_or_else(|| Error::Capabilities("no readable CapEff line".to_string()))?;
    require_capabilities(cap_eff)
}

/// The `CapEff` bit set from the text of `/proc/<pid>/status`.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn require_capabilities(cap_eff: u64) -> Result<(), Error> {
    let missing: Vec<&str> = [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW")]
        .into_iter()
        .filter(|(bit, _)| cap_eff & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::MissingCapabilities { missing: missing.join(" and "), cap_eff })
}

/// Installs `capture`'s rules, replacing whatever an earlier run installed:
/// running it twice leaves one copy. Logs the rules and the resulting table to `log`.
pub fn apply(capture: &Capture, runner: &dyn Runner, log: &mut dyn Write) -> Result<(), Error> {
    let rules = nat_rules(capture);
    remove_jumps(runner, log)?;
    writeln!(log, "mesh iptables: applying with iptables-restore --noflush:")?;
    log.write_all(rules.as_bytes())?;
    // --noflush keeps every chain not named in the input; the chain
    // declarations empty ours, so the input replaces what was there.
    checked(runner, "iptables-restore", &["--wait", "--noflush"], Some(&rules))?;
    let saved = checked(runner, "iptables-save", &["-t", "nat"], None)?;
    writeln!(log, "mesh iptables: nat table now (iptables-save -t nat, this tool's rules):")?;
    log.write_all(owned_lines(&saved.stdout).as_bytes())?;
    Ok(())
}

/// Removes everything [`apply`] installs: the jumps into this tool's chains,
/// then the chains. Succeeds when there is nothing to remove.
pub fn clean(runner: &dyn Runner, log: &mut dyn Write) -> Result<(), Error> {
    let saved = remove_jumps(runner, log)?;
    let present: Vec<&str> =
        CHAINS.into_iter().filter(|chain| saved.lines().any(|line| declares(line, chain))).collect();
    // All flushed before any is deleted: they refer to each other.
    for chain in &present {
        checked(runner, "iptables", &["--wait", "-t", "nat", "-F", chain], None)?;
    }
    for chain in &present {
        checked(runner, "iptables", &["--wait", "-t", "nat", "-X", chain], None)?;
        writeln!(log, "mesh iptables: deleted chain {chain}")?;
    }
    if present.is_empty() {
        writeln!(log, "mesh iptables: no chains of this tool in the nat table, nothing to delete")?;
    }
    Ok(())
}

/// Deletes every rule of another chain that jumps into one of this tool's
/// chains (the `PREROUTING` and `OUTPUT` jumps of earlier runs, whatever their
/// configuration), so those chains can be replaced or deleted. Returns the
/// `iptables-save -t nat` output from before the deletions.
fn remove_jumps(runner: &dyn Runner, log: &mut dyn Write) -> Result<String, Error> {
    let saved = checked(runner, "iptables-save", &["-t", "nat"], None)?.stdout;
    // Last first, so the numbers of the rules still to delete stay valid.
    for jump in jumps_into_owned_chains(&saved).into_iter().rev() {
        writeln!(log, "mesh iptables: removing {}", jump.rule)?;
        let number = jump.number.to_string();
        checked(runner, "iptables", &["--wait", "-t", "nat", "-D", jump.chain, &number], None)?;
    }
    Ok(saved)
}

/// A rule found in `iptables-save` output, with its 1-based number in its chain.
#[derive(Debug, PartialEq, Eq)]
struct Jump<'a> {
    chain: &'a str,
    number: usize,
    rule: &'a str,
}

fn jumps_into_owned_chains(saved: &str) -> Vec<Jump<'_>> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut jumps = Vec::new();
    for rule in saved.lines() {
        let mut words = rule.split_whitespace();
        let (Some("-A"), Some(chain)) = (words.next(), words.next()) else { continue };
        let number = match counts.iter_mut().find(|(name, _)| *name == chain) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                counts.push((chain, 1));
                1
            }
        };
        if CHAINS.contains(&chain) {
            continue;
        }
        let words: Vec<&str> = words.collect();
        let target = words.windows(2).find(|pair| pair[0] == "-j" || pair[0] == "-g").map(|pair| pair[1]);
        if target.is_some_and(|target| CHAINS.contains(&target)) {
            jumps.push(Jump { chain, number, rule });
        }
    }
    jumps
}

fn declares(line: &str, chain: &str) -> bool {
    line.strip_prefix(':').and_then(|rest| rest.strip_prefix(chain)).is_some_and(|rest| rest.starts_with(' '))
}

/// The lines of `iptables-save` output that belong to this tool: its chains,
/// their rules, and the jumps into them.
fn owned_lines(saved: &str) -> String {
    let owned = |line: &str| {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("*nat" | "COMMIT") => true,
            Some(word) if word.starts_with(':') => CHAINS.iter().any(|chain| declares(line, chain)),
            Some("-A") => line.split_whitespace().any(|word| CHAINS.contains(&word)),
            _ => false,
        }
    };
    saved.lines().filter(|line| owned(line)).map(|line| format!("{line}\n")).collect()
}

/// Runs a command and turns anything but exit code 0 into an [`Error`] that
/// carries its stderr.
fn checked(
    runner: &dyn Runner,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<CommandOutput, Error> {
    let command = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    let output = runner.run(program, args, stdin).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::NotInstalled { program: program.to_string() },
        _ => Error::Spawn { command: command.clone(), error: source },
    })?;
    if output.code == Some(0) {
        return Ok(output);
    }
    let status = match output.code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_string(),
    };
    let stderr = output.stderr.trim().to_string();
    let hint = if stderr.contains("Permission denied") || stderr.contains("you must be root") {
        " (the init container needs the NET_ADMIN and NET_RAW capabilities)"
    } else if stderr.contains("Couldn't load") || stderr.contains("No chain/target/match") {
        " (the kernel or this iptables lacks a needed match or target: nat, owner, REDIRECT)"
    } else {
        ""
    };
    Err(Error::Failed { command, status, stderr, hint })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use pretty_assertions::assert_eq;

    use super::*;
    use crate::iptables::tests::args;

    /// A fake `iptables`: records each command and answers from a script.
    struct Recorder<'a> {
        commands: RefCell<Vec<(String, Option<String>)>>,
        answer: Box<dyn Fn(&str) -> CommandOutput + 'a>,
    }

    impl<'a> Recorder<'a> {
        fn new(answer: impl Fn(&str) -> CommandOutput + 'a) -> Self {
            Recorder { commands: RefCell::new(Vec::new()), answer: Box::new(answer) }
        }

        fn commands(&self) -> Vec<String> {
            self.commands.borrow().iter().map(|(command, _)| command.clone()).collect()
        }

        fn stdin_of(&self, program: &str) -> Option<String> {
            self.commands
                .borrow()
                .iter()
                .find(|(command, _)| command.starts_with(program))
                .and_then(|(_, i)| i.clone())
        }
    }

    impl Runner for Recorder<'_> {
        fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<CommandOutput> {
            let command = format!("{program} {}", args.join(" "));
            self.commands.borrow_mut().push((command.clone(), stdin.map(str::to_string)));
            Ok((self.answer)(&command))
        }
    }

    fn ok(stdout: &str) -> CommandOutput {
        CommandOutput { code: Some(0), stdout: stdout.to_string(), stderr: String::new() }
    }

    /// A nat table after an earlier run with another configuration, plus one
    /// rule of someone else's in the middle.
    const EARLIER: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -j KUBE-SERVICES
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

    #[test]
    fn apply_removes_old_jumps_then_restores_the_dry_run_text() {
        let recorder =
            Recorder::new(|command| if command.starts_with("iptables-save") { ok(EARLIER) } else { ok("") });
        let capture = Capture::from_args(&args(&[])).unwrap();
        let mut log = Vec::new();
        apply(&capture, &recorder, &mut log).unwrap();
        assert_eq!(
            recorder.commands(),
            [
                "iptables-save -t nat",
                "iptables --wait -t nat -D OUTPUT 1",
                "iptables --wait -t nat -D PREROUTING 3",
                "iptables --wait -t nat -D PREROUTING 1",
                "iptables-restore --wait --noflush",
                "iptables-save -t nat",
            ]
        );
        assert_eq!(recorder.stdin_of("iptables-restore"), Some(nat_rules(&capture)));
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("mesh iptables: removing -A OUTPUT -j ISTIO_OUTPUT\n"), "{log}");
        assert!(log.contains(&nat_rules(&capture)), "{log}");
        assert!(!log.contains("KUBE-SERVICES"), "{log}");
    }

    #[test]
    fn the_dry_run_prints_what_apply_restores() {
        let flags = ["--exclude-outbound-ip-ranges", "10.0.0.0/8", "--include-inbound-ports", "80"];
        let mut dry_run = Vec::new();
        let unused = |_: &str, _: &[&str], _: Option<&str>| -> io::Result<CommandOutput> {
            panic!("a dry run runs nothing")
        };
        let mut dry_args = args(&flags);
        dry_args.dry_run = true;
        super::super::execute(&dry_args, &unused, &mut dry_run).unwrap();

        let recorder = Recorder::new(|_| ok(""));
        super::super::execute(&args(&flags), &recorder, &mut Vec::new()).unwrap();
        assert_eq!(recorder.stdin_of("iptables-restore"), Some(String::from_utf8(dry_run).unwrap()));
    }

    #[test]
    fn a_failing_restore_reports_its_stderr() {
        let recorder = Recorder::new(|command| {
            if command.starts_with("iptables-restore") {
                CommandOutput {
                    code: Some(2),
                    stdout: String::new(),
                    stderr: "iptables-restore v1.8.9 (nf_tables): Couldn't load match `owner'\nError occurred at line: 12\n"
                        .to_string(),
                }
            } else {
                ok("")
            }
        });
        let capture = Capture::from_args(&args(&[])).unwrap();
        let error = apply(&capture, &recorder, &mut Vec::new()).unwrap_err().to_string();
        assert_eq!(
            error,
            "`iptables-restore --wait --noflush` failed (exit code 2): iptables-restore v1.8.9 (nf_tables): \
             Couldn't load match `owner'\nError occurred at line: 12 (the kernel or this iptables lacks a needed \
             match or target: nat, owner, REDIRECT)"
        );
    }

    #[test]
    fn a_missing_program_says_what_to_install() {
        let missing = |_: &str, _: &[&str], _: Option<&str>| -> io::Result<CommandOutput> {
            Err(io::Error::from(io::ErrorKind::NotFound))
        };
        let error = clean(&missing, &mut Vec::new()).unwrap_err().to_string();
        assert!(error.starts_with("iptables-save was not found on PATH"), "{error}");
    }

    #[test]
    fn clean_deletes_jumps_then_chains() {
        let recorder =
            Recorder::new(|command| if command.starts_with("iptables-save") { ok(EARLIER) } else { ok("") });
        clean(&recorder, &mut Vec::new()).unwrap();
        assert_eq!(
            recorder.commands(),
            [
                "iptables-save -t nat",
                "iptables --wait -t nat -D OUTPUT 1",
                "iptables --wait -t nat -D PREROUTING 3",
                "iptables --wait -t nat -D PREROUTING 1",
                "iptables --wait -t nat -F ISTIO_INBOUND",
                "iptables --wait -t nat -F ISTIO_IN_REDIRECT",
                "iptables --wait -t nat -F ISTIO_OUTPUT",
                "iptables --wait -t nat -F ISTIO_REDIRECT",
                "iptables --wait -t nat -X ISTIO_INBOUND",
                "iptables --wait -t nat -X ISTIO_IN_REDIRECT",
                "iptables --wait -t nat -X ISTIO_OUTPUT",
                "iptables --wait -t nat -X ISTIO_REDIRECT",
            ]
        );
    }

    #[test]
    fn clean_with_nothing_installed_succeeds() {
        let empty = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        let recorder = Recorder::new(|_| ok(empty));
        clean(&recorder, &mut Vec::new()).unwrap();
        assert_eq!(recorder.commands(), ["iptables-save -t nat"]);
    }

    #[test]
    fn capabilities() {
        let status = "Name:\tmesh\nCapInh:\t0000000000000000\nCapEff:\t00000000a80435fb\n";
        assert_eq!(effective_capabilities(status), Some(0xa80435fb));
        assert_eq!(effective_capabilities("Name:\tmesh\n"), None);

        require_capabilities(1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW).unwrap();
        // Docker's default set: NET_RAW without NET_ADMIN.
        assert_eq!(
            require_capabilities(0xa80425fb).unwrap_err().to_string(),
            "mesh iptables needs CAP_NET_ADMIN in its effective capabilities (CapEff 0xa80425fb); add them to \
             the init container with securityContext.capabilities.add: [NET_ADMIN, NET_RAW], or run it as root \
             (runAsUser: 0) with those capabilities"
        );
        assert!(
            require_capabilities(0).unwrap_err().to_string().contains("needs CAP_NET_ADMIN and CAP_NET_RAW"),
        );
    }

    /// A network namespace that is deleted when dropped, whatever the test did.
    struct Netns(String);

    impl Netns {
        fn create() -> Netns {
            let name = format!("mesh-iptables-test-{}", std::process::id());
            let output = ProcessRunner.run("ip", &["netns", "add", &name], None).unwrap();
            assert_eq!(output.code, Some(0), "ip netns add {name}: {}", output.stderr);
            Netns(name)
        }

        /// Runs commands inside the namespace.
        fn runner(&self) -> impl Fn(&str, &[&str], Option<&str>) -> io::Result<CommandOutput> + '_ {
            move |program, args, stdin| {
                let mut full = vec!["netns", "exec", &self.0, program];
                full.extend_from_slice(args);
                ProcessRunner.run("ip", &full, stdin)
            }
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = ProcessRunner.run("ip", &["netns", "del", &self.0], None);
        }
    }

    /// `iptables -t nat -S`, without the built-in chains' policies.
    fn nat_table(runner: &dyn Runner) -> String {
        let output = runner.run("iptables", &["-t", "nat", "-S"], None).unwrap();
        assert_eq!(output.code, Some(0), "{}", output.stderr);
        output
            .stdout
            .lines()
            .filter(|line| !line.starts_with("-P "))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    /// The rules as `iptables -S` shows them: `-N` for each chain, then the rules.
    fn as_listed(rules: &str) -> String {
        rules
            .lines()
            .filter_map(|line| match line.strip_prefix(':') {
                Some(chain) => chain.split_whitespace().next().map(|chain| format!("-N {chain}\n")),
                None => line.starts_with("-A ").then(|| format!("{line}\n")),
            })
            .collect()
    }

    #[test]
    #[ignore = "needs root and network namespaces; run with --ignored"]
    fn applies_in_a_network_namespace() {
        let netns = Netns::create();
        let runner = netns.runner();
        let capture = Capture::from_args(&args(&["--exclude-outbound-ip-ranges", "10.96.0.0/12"])).unwrap();
        let expected = as_listed(&nat_rules(&capture));

        apply(&capture, &runner, &mut Vec::new()).unwrap();
        assert_eq!(nat_table(&runner), expected);
        // Again: still one copy.
        let mut log = Vec::new();
        apply(&capture, &runner, &mut log).unwrap();
        assert_eq!(nat_table(&runner), expected);
        // The log ends with the live table, which reads like the dry run.
        let log = String::from_utf8(log).unwrap();
        assert!(log.ends_with(&nat_rules(&capture)), "{log}");

        // A new configuration replaces the old one, jumps included.
        let no_inbound = Capture::from_args(&args(&["--include-inbound-ports", ""])).unwrap();
        apply(&no_inbound, &runner, &mut Vec::new()).unwrap();
        assert_eq!(nat_table(&runner), as_listed(&nat_rules(&no_inbound)));
        assert!(!nat_table(&runner).contains("PREROUTING"));

        clean(&runner, &mut Vec::new()).unwrap();
        assert_eq!(nat_table(&runner), "");
        clean(&runner, &mut Vec::new()).unwrap();
        assert_eq!(nat_table(&runner), "");
    }
}
