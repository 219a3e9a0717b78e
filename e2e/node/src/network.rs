//! The node's network, all of it inside network namespaces this program
//! makes, so pod and Service addresses exist nowhere else:
//!
//! ```text
//!  host netns            node netns ("<prefix>-node")          pod netns ("<prefix>-<ns>.<pod>")
//!  <prefix>-host ─veth─ <prefix>-up                            eth0 10.x.0.N/24
//!  169.254.k.1           169.254.k.2                             default via 10.x.0.1
//!  routes: pod and       br0 10.x.0.1/24 ─ <prefix>vN ──veth───┘
//!  Service ranges        kube-proxy's iptables rules
//!  via the node netns    the API server relay on 10.x.0.1:<apiserver port>
//! ```
//!
//! The host routes let the API server reach webhooks by Service or pod IP;
//! nothing routes these ranges anywhere but into the node namespace.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// Where the node's addresses come from (all given by the cluster script).
#[derive(clap::Args, Debug, Clone)]
pub struct NetworkArgs {
    /// Prefix of every namespace and interface this node makes.
    #[arg(long, default_value = "mesh0")]
    pub prefix: String,
    /// The node's pod range; the bridge takes its first address.
    #[arg(long, default_value = "10.244.0.0/24")]
    pub pod_cidr: String,
    /// The cluster's pod range (routed from the host into the node).
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// The cluster's Service range (routed from the host into the node).
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// The host's end of the link into the node namespace (a /30).
    #[arg(long, default_value = "169.254.100.1")]
    pub link_ip: Ipv4Addr,
}

/// One pod's network namespace and address.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub netns: String,
    pub ip: Ipv4Addr,
    veth: String,
}

impl PodNetwork {
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }
}

pub struct NodeNetwork {
    pub args: NetworkArgs,
    pub node_netns: String,
    /// The bridge's address: pods' gateway, and the node's InternalIP.
    pub gateway: Ipv4Addr,
    base: [u8; 3],
    in_use: Mutex<BTreeSet<u8>>,
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `ip` with `args`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Writes a sysctl inside a network namespace.
fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-qw", &format!("{key}={value}")])
        .output()
        .context("running sysctl")?;
    if !out.status.success() {
        bail!("sysctl {key}={value} in {netns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, len) = cidr.split_once('/').with_context(|| format!("{cidr}: not a CIDR"))?;
    Ok((addr.parse()?, len.parse()?))
}

impl NodeNetwork {
    /// Builds the node namespace, the bridge and the host link, after
    /// removing whatever an earlier run of the same prefix left behind.
    pub fn setup(args: NetworkArgs) -> Result<Self> {
        let (pod_net, len) = parse_cidr(&args.pod_cidr)?;
        if len != 24 {
            bail!("--pod-cidr {}: this node hands out a /24", args.pod_cidr);
        }
        let o = pod_net.octets();
        let net = Self {
            node_netns: format!("{}-node", args.prefix),
            gateway: Ipv4Addr::new(o[0], o[1], o[2], 1),
            base: [o[0], o[1], o[2]],
            in_use: Mutex::new(BTreeSet::new()),
            args,
        };
        teardown(&net.args.prefix);

        let ns = net.node_netns.as_str();
        let host_if = format!("{}-host", net.args.prefix);
        let node_if = format!("{}-up", net.args.prefix);
        let link = net.args.link_ip.octets();
        let peer = Ipv4Addr::new(link[0], link[1], link[2], link[3] + 1);
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", ns, "addr", "add", &format!("{}/24", net.gateway), "dev", "br0"])?;
        ip(&["-n", ns, "link", "set", "br0", "up"])?;
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &node_if, "netns", ns])?;
        ip(&["addr", "add", &format!("{}/30", net.args.link_ip), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{peer}/30"), "dev", &node_if])?;
        ip(&["-n", ns, "link", "set", &node_if, "up"])?;
        for range in [&net.args.cluster_cidr, &net.args.service_cidr] {
            ip(&["route", "add", range, "via", &peer.to_string(), "dev", &host_if])?;
        }
        sysctl(ns, "net.ipv4.ip_forward", "1")?;
        // Bridged pod-to-pod replies must pass kube-proxy's NAT rules.
        sysctl(ns, "net.bridge.bridge-nf-call-iptables", "1")?;
        Ok(net)
    }

    /// Makes a pod's namespace, plugs it into the bridge, gives it an
    /// address and sets the pod's `securityContext.sysctls` in it (only the
    /// network namespace's own, `net.*`: others would change the host).
    pub fn add_pod(&self, namespace: &str, name: &str, sysctls: &[(String, String)]) -> Result<PodNetwork> {
        let host = self.allocate()?;
        let pod = PodNetwork {
            netns: format!("{}-{namespace}.{name}", self.args.prefix),
            ip: Ipv4Addr::new(self.base[0], self.base[1], self.base[2], host),
            veth: format!("{}v{host}", self.args.prefix),
        };
        let made = (|| {
            let _ = ip(&["netns", "del", &pod.netns]); // a stale one of the same name
            ip(&["netns", "add", &pod.netns])?;
            let node = self.node_netns.as_str();
            ip(&[
                "-n", node, "link", "add", &pod.veth, "type", "veth", "peer", "name", "eth0", "netns",
                &pod.netns,
            ])?;
            ip(&["-n", node, "link", "set", &pod.veth, "master", "br0"])?;
            // A pod calling its own Service comes back to itself through the bridge.
            ip(&["-n", node, "link", "set", &pod.veth, "type", "bridge_slave", "hairpin", "on"])?;
            ip(&["-n", node, "link", "set", &pod.veth, "up"])?;
            ip(&["-n", &pod.netns, "link", "set", "lo", "up"])?;
            ip(&["-n", &pod.netns, "addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"])?;
            ip(&["-n", &pod.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &pod.netns, "route", "add", "default", "via", &self.gateway.to_string()])?;
            for (key, value) in sysctls {
                if !key.starts_with("net.") {
                    bail!("sysctl {key}: the node sets only network namespace sysctls (net.*)");
                }
                sysctl(&pod.netns, key, value)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            self.remove_pod(&pod);
            return Err(e);
        }
        Ok(pod)
    }

    /// Removes a pod's namespace (its veth goes with it) and frees its address.
    pub fn remove_pod(&self, pod: &PodNetwork) {
        let _ = ip(&["netns", "del", &pod.netns]);
        let _ = ip(&["-n", &self.node_netns, "link", "del", &pod.veth]);
        self.in_use.lock().unwrap_or_else(|p| p.into_inner()).remove(&pod.ip.octets()[3]);
    }

    fn allocate(&self) -> Result<u8> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        let free =
            (2..=254u8).find(|h| !in_use.contains(h)).context("no pod address left in the node's /24")?;
        in_use.insert(free);
        Ok(free)
    }
}

/// Removes every namespace and link with this prefix, and stops whatever
/// still runs inside them. Safe to call when nothing is there.
pub fn teardown(prefix: &str) {
    let listed = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    let ours: Vec<String> = String::from_utf8_lossy(&listed)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect();
    for ns in &ours {
        kill_inside(ns);
    }
    // Pods first, the node namespace (holding the bridge) last.
    for ns in
        ours.iter().filter(|n| !n.ends_with("-node")).chain(ours.iter().filter(|n| n.ends_with("-node")))
    {
        let _ = ip(&["netns", "del", ns]);
    }
    let _ = ip(&["link", "del", &format!("{prefix}-host")]);
}

fn kill_inside(netns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Runs `f` on a thread inside the network namespace `path`: sockets it
/// makes belong to that namespace for their whole life.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in network namespace panicked"))?
}
