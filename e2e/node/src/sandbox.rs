//! `localnode exec`: how a container process enters its pod. The node starts
//! every container (and every exec probe, and `make pod-exec`) through this
//! small launcher, which runs in a fresh process, so the namespace and
//! credential changes are made in ordinary code, not between fork and exec:
//!
//! 1. join the pod's network namespace;
//! 2. take a private mount namespace and UTS namespace (hostname = pod name);
//! 3. mount the pod's volumes at their paths, and the pod's /etc/hosts and
//!    /etc/resolv.conf. A target whose parent does not exist is made inside
//!    an overlay of its nearest existing ancestor, so nothing is created on
//!    the host's filesystem and nothing outlives the process;
//! 4. change to the working directory; with `--tty`, take stdin (a
//!    terminal) as the controlling terminal of a new session;
//! 5. drop to the container's user, group and capabilities, and exec the
//!    program.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use std::os::fd::{AsFd, AsRawFd};

use nix::unistd::{Gid, Uid, fexecve, setgid, setgroups, sethostname, setuid};

/// What `localnode exec` was asked to do.
#[derive(clap::Args, Debug, Clone)]
pub struct ExecArgs {
    /// The pod's network namespace (a /run/netns path).
    #[arg(long)]
    pub netns: PathBuf,
    /// A volume mount: SOURCE:TARGET or SOURCE:TARGET:ro.
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// The hostname inside the pod.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Scratch folder for overlay layers (one per pod).
    #[arg(long)]
    pub scratch: PathBuf,
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// The capabilities the process keeps, comma-separated (CAP_ prefix
    /// optional), or ALL.
    #[arg(long, default_value = "")]
    pub caps: String,
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Stdin is a terminal: make it the controlling terminal of a new
    /// session, as a container runtime does for `kubectl exec -t`.
    #[arg(long)]
    pub tty: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Enters the sandbox and execs the command; returns only on failure.
pub fn exec(args: ExecArgs) -> Result<()> {
    let netns = File::open(&args.netns).with_context(|| format!("opening {}", args.netns.display()))?;
    setns(&netns, CloneFlags::CLONE_NEWNET).context("joining the pod's network namespace")?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .context("unsharing mount and UTS namespaces")?;
    // Nothing mounted from here on propagates back to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("making / private")?;
    if let Some(name) = &args.hostname {
        sethostname(name).context("setting the hostname")?;
    }

    // Sources and the program are opened before anything is mounted: a
    // mount over a folder (an emptyDir at /work, say) must not hide the
    // source of a later mount, or the program itself.
    let mounts = args.mounts.iter().map(|m| Mount::parse(m)).collect::<Result<Vec<_>>>()?;
    let sources = mounts.iter().map(|m| open_path(&m.source)).collect::<Result<Vec<_>>>()?;
    let program = resolve(&args.command[0]).ok().map(|p| File::open(&p).map(|f| (p, f))).transpose()?;

    // Every target first, then the binds: an overlay made later would hide
    // a bind made earlier below it.
    let mut overlays = Overlays::new(&args.scratch);
    for m in &mounts {
        overlays.ensure_target(&m.target, m.source.is_dir())?;
    }
    for (m, source) in mounts.iter().zip(&sources) {
        let via = PathBuf::from(format!("/proc/self/fd/{}", source.as_raw_fd()));
        bind(&via, &m.target, m.read_only).with_context(|| format!("mounting {}", m.source.display()))?;
    }
    if let Some(dir) = &args.workdir {
        overlays.ensure_target(dir, true)?;
        std::env::set_current_dir(dir).with_context(|| format!("changing to {}", dir.display()))?;
    }

    if args.tty {
        nix::unistd::setsid().context("starting a session for the terminal")?;
        rustix::process::ioctl_tiocsctty(std::io::stdin())
            .context("taking the terminal as the controlling one")?;
    }
    // Open the program while still root: a container user (Envoy's 1337)
    // may not be able to walk the path to it (a tool cache under /root).
    // One that only a volume provides is looked up now.
    let (program, file) = match program {
        Some(found) => found,
        None => {
            let p = resolve(&args.command[0])?;
            let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            (p, f)
        }
    };
    give_output_to(args.uid, args.gid)?;
    drop_privileges(args.uid, args.gid, &parse_caps(&args.caps)?)?;

    let argv: Vec<CString> =
        args.command.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| CString::new(format!("{}={}", k.display(), v.display())).ok())
        .collect();
    let err = fexecve(file.as_fd(), &argv, &env).unwrap_err();
    bail!("exec {}: {err}", program.display())
}

/// Finds a program as the shell would: a path as given, a bare name on PATH.
fn resolve(name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{name}: not found on PATH ({path})"))
}

struct Mount {
    source: PathBuf,
    target: PathBuf,
    read_only: bool,
}

impl Mount {
    fn parse(spec: &str) -> Result<Self> {
        let mut parts = spec.split(':');
        let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
            bail!("mount {spec:?}: want SOURCE:TARGET[:ro]");
        };
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some(other) => bail!("mount {spec:?}: unknown option {other:?}"),
        };
        Ok(Self { source: source.into(), target: target.into(), read_only })
    }
}

/// A handle on a path that stays valid whatever is mounted over it later.
fn open_path(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH)
        .open(path)
        .with_context(|| format!("opening volume source {}", path.display()))
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("bind-mounting {} at {}", source.display(), target.display()))?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
            .with_context(|| format!("making {} read-only", target.display()))?;
    }
    Ok(())
}

/// Makes mount targets exist without writing to the host: the nearest
/// existing ancestor gets a writable overlay (once), private to this process.
struct Overlays {
    scratch: PathBuf,
    done: BTreeSet<PathBuf>,
    rooted: bool,
}

impl Overlays {
    /// Layers go in a folder of this process's own: exec probes and
    /// `enter` share the container's scratch folder and run beside it.
    /// Folders of processes that have exited are removed first.
    fn new(scratch: &Path) -> Self {
        if let Ok(entries) = std::fs::read_dir(scratch) {
            for entry in entries.flatten() {
                let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
                if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let own = scratch.join(std::process::id().to_string());
        Self { scratch: own, done: BTreeSet::new(), rooted: false }
    }

    fn ensure_target(&mut self, target: &Path, dir: bool) -> Result<()> {
        if target.exists() {
            return Ok(());
        }
        let ancestor = target
            .ancestors()
            .skip(1)
            .find(|a| a.is_dir())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        if ancestor == Path::new("/") {
            // An overlay of / would hide every mount below it (/proc, /dev):
            // the container gets a root of its own instead.
            self.new_root()?;
        } else if !self.done.iter().any(|d| ancestor.starts_with(d)) {
            self.overlay(&ancestor)?;
        }
        if dir {
            std::fs::create_dir_all(target)
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            File::create(target).map(drop)
        }
        .with_context(|| format!("creating mount target {}", target.display()))
    }

    /// A tmpfs root holding the host's top-level entries (bound with every
    /// mount below them, symlinks recreated), where new top-level folders
    /// can be made; the process then chroots into it.
    fn new_root(&mut self) -> Result<()> {
        if self.rooted {
            return Ok(());
        }
        let root = self.scratch.join("root");
        std::fs::create_dir_all(&root)?;
        mount(Some("tmpfs"), &root, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
            .context("mounting the container's root")?;
        for entry in std::fs::read_dir("/")? {
            let entry = entry?;
            let (from, to) = (entry.path(), root.join(entry.file_name()));
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
                continue;
            }
            if kind.is_dir() {
                std::fs::create_dir(&to)?;
            } else {
                File::create(&to)?;
            }
            mount(Some(&from), &to, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .with_context(|| format!("binding {} into the container's root", from.display()))?;
        }
        nix::unistd::chroot(&root).context("entering the container's root")?;
        std::env::set_current_dir("/")?;
        self.rooted = true;
        Ok(())
    }

    fn overlay(&mut self, dir: &Path) -> Result<()> {
        let layer = self.scratch.join(format!("overlay-{}", self.done.len()));
        let (upper, work) = (layer.join("upper"), layer.join("work"));
        // A folder left by an earlier process with the same pid is stale.
        let _ = std::fs::remove_dir_all(&layer);
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&work)?;
        let options =
            format!("lowerdir={},upperdir={},workdir={}", dir.display(), upper.display(), work.display());
        mount(Some("overlay"), dir, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
            .with_context(|| format!("overlaying {}", dir.display()))?;
        self.done.insert(dir.to_path_buf());
        Ok(())
    }
}

fn parse_caps(list: &str) -> Result<CapsHashSet> {
    if list.trim().eq_ignore_ascii_case("ALL") {
        return Ok(caps::all());
    }
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let full = if name.to_ascii_uppercase().starts_with("CAP_") {
                name.to_ascii_uppercase()
            } else {
                format!("CAP_{}", name.to_ascii_uppercase())
            };
            full.parse::<Capability>().map_err(|_| anyhow::anyhow!("unknown capability {name:?}"))
        })
        .collect()
}

/// Hands the container's output (its log file) to the user it runs as, as
/// runc does with a container's stdio, so it may open `/dev/stdout` again
/// (Envoy's access log does).
fn give_output_to(uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    let Some(uid) = uid.filter(|u| *u != 0) else { return Ok(()) };
    let gid = gid.unwrap_or(uid);
    use nix::sys::stat::{SFlag, fstat};
    use std::os::fd::AsFd;
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    for file in [stdout.as_fd(), stderr.as_fd()] {
        let stat = fstat(file).context("fstat of the container's output")?;
        // A regular file: the node's log; never a device such as /dev/null.
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG {
            nix::unistd::fchown(file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .context("handing the container's log to its user")?;
        }
    }
    Ok(())
}

/// Leaves the process with exactly `keep` capabilities, as the given user
/// and group. Non-root users get them as ambient capabilities so they
/// survive exec, as container runtimes do.
fn drop_privileges(uid: Option<u32>, gid: Option<u32>, keep: &CapsHashSet) -> Result<()> {
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities the kernel does not know cannot be dropped, nor held.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    let uid = uid.unwrap_or(0);
    if let Some(gid) = gid.or((uid != 0).then_some(uid)) {
        setgroups(&[Gid::from_raw(gid)]).context("setgroups")?;
        setgid(Gid::from_raw(gid)).context("setgid")?;
    }
    if uid != 0 {
        caps::securebits::set_keepcaps(true).context("keeping capabilities across setuid")?;
        setuid(Uid::from_raw(uid)).context("setuid")?;
    }
    // Effective first: the kernel refuses a permitted set smaller than the effective one.
    let keep: CapsHashSet = keep.intersection(&caps::read(None, CapSet::Permitted)?).copied().collect();
    let keep = &keep;
    caps::set(None, CapSet::Effective, keep).context("setting effective capabilities")?;
    caps::set(None, CapSet::Permitted, keep).context("setting permitted capabilities")?;
    caps::set(None, CapSet::Inheritable, keep).context("setting inheritable capabilities")?;
    if uid != 0 {
        caps::set(None, CapSet::Ambient, keep).context("setting ambient capabilities")?;
    }
    Ok(())
}
