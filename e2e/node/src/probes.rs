//! Startup, liveness and readiness probes. httpGet and tcpSocket connect
//! from the node's network namespace to the pod's IP, as the kubelet does
//! from the host (so they pass through the pod's inbound iptables rules);
//! exec runs the command inside the container's sandbox.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::network::in_netns;

/// Which probe, for messages and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// The running state of one probe of one container.
#[derive(Debug)]
pub struct ProbeState {
    pub kind: Kind,
    pub spec: Probe,
    successes: i32,
    failures: i32,
    next: Instant,
    /// The probe's verdict after its thresholds (None: not decided yet).
    pub result: Option<bool>,
    pub last_message: String,
}

impl ProbeState {
    pub fn new(kind: Kind, spec: Probe, started: Instant) -> Self {
        let delay = Duration::from_secs(spec.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        Self {
            kind,
            spec,
            successes: 0,
            failures: 0,
            next: started + delay,
            result: None,
            last_message: String::new(),
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records one attempt; returns true when the verdict changed.
    pub fn record(&mut self, ok: bool, message: String, now: Instant) -> bool {
        let period = Duration::from_secs(self.spec.period_seconds.unwrap_or(10).max(1) as u64);
        self.next = now + period;
        self.last_message = message;
        let before = self.result;
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.spec.success_threshold.unwrap_or(1).max(1) {
                self.result = Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.spec.failure_threshold.unwrap_or(3).max(1) {
                self.result = Some(false);
            }
        }
        before != self.result
    }
}

/// What a probe needs to know about where it runs.
#[derive(Clone)]
pub struct Target {
    pub node_netns: PathBuf,
    pub pod_ip: String,
    pub container: Container,
    /// The `localnode exec` command line for this container, minus the probe command.
    pub exec_prefix: Vec<String>,
    pub exec_env: Vec<(String, String)>,
}

fn port(target: &Target, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => target
            .container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name}")),
    }
}

/// Runs one probe attempt: Ok(()) on success, Err(reason) otherwise.
pub async fn attempt(spec: &Probe, target: &Target) -> Result<(), String> {
    let timeout = Duration::from_secs(spec.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(http) = &spec.http_get {
        let port = port(target, &http.port)?;
        let host = http.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let addr: SocketAddr = format!("{host}:{port}").parse().map_err(|e| format!("{host}:{port}: {e}"))?;
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> =
            http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        if http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
            return Err("HTTPS probes are not supported by this node".into());
        }
        let netns = target.node_netns.clone();
        return tokio::task::spawn_blocking(move || {
            in_netns(&netns, move || http_get(addr, &path, &headers, timeout)).map_err(|e| e.to_string())?
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    if let Some(tcp) = &spec.tcp_socket {
        let port = port(target, &tcp.port)?;
        let host = tcp.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let addr: SocketAddr = format!("{host}:{port}").parse().map_err(|e| format!("{host}:{port}: {e}"))?;
        let netns = target.node_netns.clone();
        return tokio::task::spawn_blocking(move || {
            in_netns(&netns, move || {
                TcpStream::connect_timeout(&addr, timeout).map(drop).map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())?
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    if let Some(exec) = &spec.exec {
        let mut argv = target.exec_prefix.clone();
        argv.extend(exec.command.iter().flatten().cloned());
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(target.exec_env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| format!("command timed out after {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        return if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "command failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim().chars().take(200).collect::<String>()
            ))
        };
    }
    Err("probe has no handler this node supports (httpGet, tcpSocket, exec)".into())
}

/// A minimal HTTP/1.1 GET: success is a status from 200 to 399, as for the kubelet.
fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("GET {path}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.35\r\nAccept: */*\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(|e| format!("GET {path}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP response"))?;
    if (200..400).contains(&code) { Ok(()) } else { Err(format!("GET {path}: status {code}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: i32, failure: i32) -> Probe {
        Probe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            period_seconds: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_decide_the_verdict() {
        let now = Instant::now();
        let mut p = ProbeState::new(Kind::Readiness, probe(2, 2), now);
        assert!(p.due(now));
        assert!(!p.record(true, String::new(), now));
        assert_eq!(p.result, None);
        assert!(p.record(true, String::new(), now));
        assert_eq!(p.result, Some(true));
        assert!(!p.record(false, "x".into(), now));
        assert!(p.record(false, "x".into(), now));
        assert_eq!(p.result, Some(false));
        assert!(!p.due(now));
    }
}
