//! `kubectl exec`: the kubelet's `/exec/{namespace}/{pod}/{container}`.
//! The API server asks to upgrade to SPDY/3.1 ([`crate::spdy`]) with the
//! remote command protocol `v4.channel.k8s.io`, then opens one stream per
//! channel (error, stdin, stdout, stderr, resize). The command runs as the
//! container's own processes do: the `localnode exec` command line and the
//! environment the container started with ([`ContainerEntry`], saved by
//! [`crate::pod`] at each start), the command appended. Its exit is told
//! on the error stream as a `metav1.Status`, which is how `kubectl exec`
//! learns the exit code.
//!
//! With `tty=1` the command gets a pseudo-terminal (the launcher makes it
//! the controlling terminal of a new session); its output is the stdout
//! stream, and the resize stream sets the terminal's size.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use anyhow::{Context, Result};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::kubelet::{
    Body, find_exact_pod_dir, header_values, on_upgrade, query_pairs, switching_protocols, text,
};
use crate::spdy::{self, Connection, Stream, StreamWriter};

/// The remote command protocol spoken (the API server offers it first).
pub const PROTOCOL: &str = "v4.channel.k8s.io";
/// How long the client has to open every stream it asked for.
const STREAM_SETUP: Duration = Duration::from_secs(30);
/// After the command exits, how long its output may take to drain (a
/// process it left behind may hold the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// How a container's processes enter its sandbox: the `localnode exec`
/// command line (up to and with its `--`) and the container's environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerEntry {
    pub launcher: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl ContainerEntry {
    fn path(pod_dir: &Path, container: &str) -> PathBuf {
        pod_dir.join("exec").join(format!("{container}.json"))
    }

    /// Saves it for the container's run; readable by root only (the
    /// environment may hold Secret values).
    pub fn save(&self, pod_dir: &Path, container: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path(pod_dir, container);
        let dir = pod_dir.join("exec");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".{container}.json.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The container is not running: nothing can be run in it.
    pub fn remove(pod_dir: &Path, container: &str) {
        let _ = std::fs::remove_file(Self::path(pod_dir, container));
    }

    pub fn load(pod_dir: &Path, container: &str) -> Option<Self> {
        let text = std::fs::read(Self::path(pod_dir, container)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The command line that runs `command` in the container.
    fn argv(&self, command: &[String], tty: bool) -> Vec<String> {
        let mut argv = self.launcher.clone();
        if tty {
            let at = argv.iter().rposition(|a| a == "--").unwrap_or(argv.len());
            argv.insert(at, "--tty".into());
        }
        argv.extend(command.iter().cloned());
        argv
    }
}

/// What the API server asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    /// From the path after `/exec/` (`{namespace}/{pod}[/{uid}]/{container}`)
    /// and the query.
    pub fn parse(rest: &str, query: &str) -> Result<Self, String> {
        let parts: Vec<&str> = rest.split('/').collect();
        let (namespace, pod, container) = match parts.as_slice() {
            [ns, pod, container] | [ns, pod, _, container] => (*ns, *pod, *container),
            _ => return Err("want /exec/{namespace}/{pod}/{container}".into()),
        };
        if [namespace, pod, container].iter().any(|p| p.is_empty()) {
            return Err("want /exec/{namespace}/{pod}/{container}".into());
        }
        let mut request = Self {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
            command: Vec::new(),
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        };
        for (key, value) in query_pairs(query) {
            let on = value == "1" || value.eq_ignore_ascii_case("true");
            match key.as_str() {
                "command" => request.command.push(value),
                "input" | "stdin" => request.stdin = on,
                "output" | "stdout" => request.stdout = on,
                "error" | "stderr" => request.stderr = on,
                "tty" => request.tty = on,
                _ => {}
            }
        }
        if request.command.is_empty() {
            return Err("no command: give it as command=... (kubectl exec POD -- COMMAND)".into());
        }
        if !(request.stdin || request.stdout || request.stderr) {
            return Err("ask for at least one of stdin, stdout and stderr".into());
        }
        // A terminal has one output: stderr goes into it, as in the kubelet.
        if request.tty {
            request.stderr = false;
        }
        Ok(request)
    }

    /// The streams the client opens for this request.
    fn expected(&self) -> Vec<Channel> {
        let mut channels = vec![Channel::Error];
        for (wanted, channel) in [
            (self.stdin, Channel::Stdin),
            (self.stdout, Channel::Stdout),
            (self.stderr, Channel::Stderr),
            (self.tty, Channel::Resize),
        ] {
            if wanted {
                channels.push(channel);
            }
        }
        channels
    }
}

/// The client's offer of remote command protocols, answered with the one
/// spoken here, if offered.
pub fn negotiate(offered: &[String]) -> Option<&'static str> {
    offered.iter().any(|p| p == PROTOCOL).then_some(PROTOCOL)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Channel {
    fn from_stream_type(name: &str) -> Option<Self> {
        Some(match name {
            "error" => Self::Error,
            "stdin" => Self::Stdin,
            "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            "resize" => Self::Resize,
            _ => return None,
        })
    }
}

/// `/exec/...`: checks the request and the container, answers 101 and
/// runs the session on the upgraded connection.
pub fn handle(
    request: &mut Request<Incoming>,
    rest: &str,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> Response<Body> {
    let exec = match ExecRequest::parse(rest, request.uri().query().unwrap_or("")) {
        Ok(exec) => exec,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    if !crate::kubelet::wants_upgrade(request.headers(), "SPDY/3.1") {
        return text(
            StatusCode::BAD_REQUEST,
            "exec: the local node takes only an upgrade to SPDY/3.1 (Upgrade: SPDY/3.1), as the API server sends\n",
        );
    }
    let offered = header_values(request.headers(), "x-stream-protocol-version");
    let Some(protocol) = negotiate(&offered) else {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to negotiate protocol: the client offers {offered:?}, the local node speaks {PROTOCOL}\n"
            ),
        );
    };
    let (ns, pod, container) = (&exec.namespace, &exec.pod, &exec.container);
    let Some(pod_dir) = find_exact_pod_dir(state_dir, ns, pod) else {
        return text(StatusCode::NOT_FOUND, format!("pod {ns}/{pod} is not on this node\n"));
    };
    let Some(entry) = ContainerEntry::load(&pod_dir, container) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} of pod {ns}/{pod} is not running: nothing can be run in it\n"),
        );
    };
    on_upgrade(request, "exec", move |io| session(io, exec, entry, shutdown));
    switching_protocols("SPDY/3.1", &[("x-stream-protocol-version", protocol.to_string())])
}

/// How the command ended, for the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The `metav1.Status` the client reads on the error stream; the exit code
/// travels in a cause, as the kubelet sends it.
fn status(outcome: &Outcome, command: &[String]) -> serde_json::Value {
    use serde_json::json;
    match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {message}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }),
    }
}

/// The streams of one exec, as the client opened them.
struct Streams {
    error: StreamWriter,
    stdin: Option<Stream>,
    stdout: Option<StreamWriter>,
    stderr: Option<StreamWriter>,
    resize: Option<Stream>,
}

/// Takes the client's streams until every one `request` needs is open.
async fn collect(conn: &mut Connection, request: &ExecRequest) -> Result<Streams, String> {
    let expected = request.expected();
    let mut got: Vec<(Channel, Stream)> = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAM_SETUP;
    while got.len() < expected.len() {
        let stream = match tokio::time::timeout_at(deadline, conn.next_stream()).await {
            Ok(Some(stream)) => stream,
            Ok(None) => return Err("the client went before opening its streams".into()),
            Err(_) => {
                let missing: Vec<_> = expected.iter().filter(|c| !got.iter().any(|(g, _)| g == *c)).collect();
                return Err(format!("timed out after {STREAM_SETUP:?} waiting for the streams {missing:?}"));
            }
        };
        let channel = stream.headers.get("streamtype").and_then(Channel::from_stream_type);
        match channel {
            Some(c) if expected.contains(&c) && !got.iter().any(|(g, _)| *g == c) => got.push((c, stream)),
            _ => {
                tracing::debug!(headers = ?stream.headers, "exec: a stream not asked for");
                let _ = stream.out.reset(crate::spdy::PROTOCOL_ERROR).await;
            }
        }
    }
    let mut take = |channel: Channel| got.iter().position(|(c, _)| *c == channel).map(|i| got.remove(i).1);
    // Streams this side only writes to: what the client sends on them is dropped.
    let writer = |s: Stream| s.out;
    let error = take(Channel::Error).map(writer).ok_or("no error stream")?;
    Ok(Streams {
        error,
        stdin: take(Channel::Stdin),
        stdout: take(Channel::Stdout).map(writer),
        stderr: take(Channel::Stderr).map(writer),
        resize: take(Channel::Resize),
    })
}

async fn session<IO>(io: IO, request: ExecRequest, entry: ContainerEntry, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let key = format!("{}/{}/{}", request.namespace, request.pod, request.container);
    let mut conn = Connection::start(io);
    let streams = match collect(&mut conn, &request).await {
        Ok(streams) => streams,
        Err(e) => {
            tracing::info!(container = %key, error = %e, "exec: no session");
            conn.close().await;
            return;
        }
    };
    conn.refuse_further_streams();
    tracing::info!(container = %key, command = ?request.command, tty = request.tty, "exec");
    let error = streams.error.clone();
    if let Some(outcome) = run(&request, &entry, streams, conn.closed(), shutdown).await {
        tracing::info!(container = %key, outcome = ?outcome, "exec done");
        let status = status(&outcome, &request.command).to_string();
        let _ = error.write(status.as_bytes()).await;
        let _ = error.finish().await;
    }
    conn.close().await;
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Runs the command with the streams; None when the client went first.
async fn run(
    request: &ExecRequest,
    entry: &ContainerEntry,
    streams: Streams,
    closed: CancellationToken,
    shutdown: CancellationToken,
) -> Option<Outcome> {
    let argv = entry.argv(&request.command, request.tty);
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(&entry.env).kill_on_drop(true);
    let mut terminal = None;
    if request.tty {
        let pty = match Pty::open() {
            Ok(pty) => pty,
            Err(e) => return Some(Outcome::Failed(format!("allocating a terminal: {e:#}"))),
        };
        let ends = (|| Ok::<_, std::io::Error>((pty.slave.try_clone()?, pty.slave.try_clone()?)))();
        let Ok((stdin, stdout)) = ends else {
            return Some(Outcome::Failed("duplicating the terminal".into()));
        };
        // No process group of its own: the launcher starts a session,
        // which a group leader cannot.
        cmd.stdin(Stdio::from(stdin)).stdout(Stdio::from(stdout)).stderr(Stdio::from(pty.slave));
        terminal = Some(pty.master);
    } else {
        let pipe = |wanted: bool| if wanted { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe(request.stdin))
            .stdout(pipe(request.stdout))
            .stderr(pipe(request.stderr))
            // Its own group, so what it starts goes with it when the client leaves.
            .process_group(0);
    }
    let spawned = cmd.spawn();
    // The command holds the terminal's other end; ours must close, or its
    // output would never end.
    drop(cmd);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Some(Outcome::Failed(format!("starting {}: {e}", argv[0]))),
    };
    let pid = child.id();

    let (input, outputs): (Option<Writer>, Vec<(Reader, StreamWriter)>) = match &terminal {
        Some(master) => {
            let input = request.stdin.then(|| Box::new(master.clone()) as Writer);
            let outputs = streams.stdout.clone().map(|w| (Box::new(master.clone()) as Reader, w));
            (input, outputs.into_iter().collect())
        }
        None => {
            let input = child.stdin.take().map(|w| Box::new(w) as Writer);
            let mut outputs: Vec<(Reader, StreamWriter)> = Vec::new();
            if let (Some(r), Some(w)) = (child.stdout.take(), streams.stdout.clone()) {
                outputs.push((Box::new(r), w));
            }
            if let (Some(r), Some(w)) = (child.stderr.take(), streams.stderr.clone()) {
                outputs.push((Box::new(r), w));
            }
            (input, outputs)
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(input), Some(mut stream)) = (input, streams.stdin) {
        tasks.spawn(async move { spdy::receive_into(&mut stream.incoming, input).await });
    }
    if let (Some(master), Some(resize)) = (&terminal, streams.resize) {
        tasks.spawn(resize_terminal(resize, master.clone()));
    }
    let mut outputs: Vec<_> = outputs
        .into_iter()
        .map(|(reader, writer)| {
            let out = writer.clone();
            (tokio::spawn(async move { out.send_from(reader).await }), writer)
        })
        .collect();

    let exited = tokio::select! {
        exited = child.wait() => exited,
        _ = closed.cancelled() => {
            kill(pid);
            return None;
        }
        _ = shutdown.cancelled() => {
            kill(pid);
            return Some(Outcome::Failed("the node is shutting down".into()));
        }
    };
    let outcome = match exited {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            Outcome::Exited(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9)))
        }
        Err(e) => Outcome::Failed(format!("waiting for the command: {e}")),
    };
    let drained = tokio::time::Instant::now() + OUTPUT_DRAIN;
    for (task, writer) in &mut outputs {
        if tokio::time::timeout_at(drained, &mut *task).await.is_err() {
            task.abort();
            let _ = writer.finish().await;
        }
    }
    tasks.abort_all();
    Some(outcome)
}

/// The command's process group (or session) goes, and the command itself.
fn kill(pid: Option<u32>) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else { return };
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// A size the client's terminal has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TerminalSize {
    width: u16,
    height: u16,
}

/// Cuts the resize stream's JSON objects out of its data, however the
/// frames split them.
#[derive(Default)]
struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// A message larger than this is not a size: dropped.
    const LIMIT: usize = 4096;

    fn push(&mut self, data: &[u8]) -> Vec<TerminalSize> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut objects = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
        let used = loop {
            match objects.next() {
                Some(Ok(size)) => sizes.push(size),
                // Cut short: the rest comes with the next frame.
                Some(Err(e)) if e.is_eof() => break objects.byte_offset(),
                Some(Err(_)) => break self.buf.len(),
                None => break objects.byte_offset(),
            }
        };
        self.buf.drain(..used);
        if self.buf.len() > Self::LIMIT {
            self.buf.clear();
        }
        sizes
    }
}

async fn resize_terminal(mut stream: Stream, terminal: Terminal) {
    let mut decoder = ResizeDecoder::default();
    while let Some(data) = stream.incoming.recv().await {
        for size in decoder.push(&data) {
            let winsize = rustix::termios::Winsize {
                ws_row: size.height,
                ws_col: size.width,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            if let Err(e) = rustix::termios::tcsetwinsize(terminal.0.get_ref(), winsize) {
                tracing::debug!(error = %e, "exec: resizing the terminal");
            }
        }
    }
}

/// A new pseudo-terminal: the master end for this side, the other for the command.
struct Pty {
    master: Terminal,
    slave: OwnedFd,
}

impl Pty {
    fn open() -> Result<Self> {
        let pty = nix::pty::openpty(None, None).context("openpty")?;
        let flags = nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL).context("fcntl")?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_SETFL(flags)).context("fcntl")?;
        // SAFETY: an OwnedFd is open and refers to the same terminal until
        // dropped, and only the AsyncFd owns it from here on.
        let master = unsafe { AsyncFd::register(pty.master) }
            .map_err(|e| anyhow::anyhow!("registering the terminal: {e}"))?;
        Ok(Self { master: Terminal(Arc::new(master)), slave: pty.slave })
    }
}

/// The master end of a pseudo-terminal, read and written without blocking.
#[derive(Clone)]
struct Terminal(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for Terminal {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref().as_fd(), unfilled).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Every holder of the other end closed it: the end of the output.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Terminal {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| nix::unistd::write(fd.get_ref().as_fd(), data).map_err(std::io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A terminal cannot be half-closed: the end of stdin is not passed on.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn requests_are_read_from_the_path_and_query() {
        let request = ExecRequest::parse(
            "shop/web-1/app",
            "command=sh&command=-c&command=echo+out%3B+exit+3&input=1&output=1&error=1&tty=0",
        )
        .expect("parsed");
        assert_eq!(request.command, strings(&["sh", "-c", "echo out; exit 3"]));
        assert_eq!(
            (request.namespace.as_str(), request.pod.as_str(), request.container.as_str()),
            ("shop", "web-1", "app")
        );
        assert!(request.stdin && request.stdout && request.stderr && !request.tty);
        assert_eq!(request.expected(), [Channel::Error, Channel::Stdin, Channel::Stdout, Channel::Stderr]);
        // A terminal: no stderr stream, a resize stream.
        let tty = ExecRequest::parse("ns/p/c", "command=sh&output=1&error=1&tty=1").expect("parsed");
        assert_eq!(tty.expected(), [Channel::Error, Channel::Stdout, Channel::Resize]);
        assert!(ExecRequest::parse("ns/p/c", "output=1").is_err_and(|e| e.contains("no command")));
        assert!(ExecRequest::parse("ns/p", "command=ls&output=1").is_err());
        assert!(ExecRequest::parse("ns/p/c", "command=ls").is_err_and(|e| e.contains("at least one")));
    }

    #[test]
    fn only_the_v4_protocol_is_spoken() {
        let offered =
            strings(&["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]);
        assert_eq!(negotiate(&offered), Some(PROTOCOL));
        assert_eq!(negotiate(&strings(&["v3.channel.k8s.io"])), None);
        assert_eq!(negotiate(&[]), None);
    }

    #[test]
    fn the_exit_code_travels_as_a_status_cause() {
        let command = strings(&["sh", "-c", "exit 3"]);
        assert_eq!(
            status(&Outcome::Exited(0), &command).to_string(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let failed = status(&Outcome::Exited(3), &command);
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
        assert!(
            failed["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("command terminated with non-zero exit code"))
        );
        let broken = status(&Outcome::Failed("starting x: no such file".into()), &command);
        assert_eq!(broken["reason"], "InternalError");
        assert!(broken["message"].as_str().is_some_and(|m| m.contains("no such file")));
    }

    #[test]
    fn resize_messages_are_cut_out_however_they_arrive() {
        let mut decoder = ResizeDecoder::default();
        assert_eq!(decoder.push(br#"{"Width":80,"Height":24}"#), [TerminalSize { width: 80, height: 24 }]);
        assert_eq!(decoder.push(br#"{"Width":100,"He"#), []);
        assert_eq!(
            decoder.push(b"ight\":50}\n{\"Width\":1,\"Height\":2}\n"),
            [TerminalSize { width: 100, height: 50 }, TerminalSize { width: 1, height: 2 }]
        );
        // Garbage is dropped, and what follows is read.
        assert_eq!(decoder.push(b"nonsense"), []);
        assert_eq!(decoder.push(br#"{"Width":3,"Height":4}"#), [TerminalSize { width: 3, height: 4 }]);
    }

    #[test]
    fn a_terminal_goes_before_the_launchers_separator() {
        let entry = ContainerEntry {
            launcher: strings(&["/bin/localnode", "exec", "--netns", "/run/netns/x", "--"]),
            env: BTreeMap::new(),
        };
        assert_eq!(
            entry.argv(&strings(&["tty"]), true),
            strings(&["/bin/localnode", "exec", "--netns", "/run/netns/x", "--tty", "--", "tty"])
        );
        assert_eq!(entry.argv(&strings(&["id"]), false).last().map(String::as_str), Some("id"));
        let dir = std::env::temp_dir().join(format!("localnode-exec-{}", std::process::id()));
        entry.save(&dir, "app").expect("saved");
        assert_eq!(ContainerEntry::load(&dir, "app"), Some(entry));
        ContainerEntry::remove(&dir, "app");
        assert_eq!(ContainerEntry::load(&dir, "app"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
