//! Figures: the controller's memory and CPU from /proc (by the pid its
//! start script wrote), and percentiles of latencies.

use std::time::{Duration, Instant};

/// The controller's process, read from /proc.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    /// CPU time used so far (user + system), in clock ticks.
    pub ticks: u64,
    pub rss_kib: u64,
    /// Peak RSS so far (VmHWM).
    pub hwm_kib: u64,
    pub pid: u32,
}

/// Where to find the controller, and the clock tick rate.
pub struct Process {
    pid_file: Option<std::path::PathBuf>,
    hz: u64,
}

impl Process {
    pub fn new(pid_file: Option<std::path::PathBuf>) -> Self {
        let hz = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100);
        Self { pid_file, hz }
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file.as_ref()?).ok()?.trim().parse().ok()
    }

    /// The controller now; `None` when no pid file was given or the
    /// process is gone.
    pub fn sample(&self) -> Option<Sample> {
        let pid = self.pid()?;
        sample_of(&pid.to_string(), pid)
    }

    /// This load tool itself.
    pub fn own(&self) -> Option<Sample> {
        sample_of("self", std::process::id())
    }

    /// CPU used between two samples of one process, in % of one core.
    pub fn cpu_percent(&self, before: &Sample, after: &Sample) -> Option<f64> {
        if before.pid != after.pid {
            return None;
        }
        let secs = after.at.duration_since(before.at).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        Some(after.ticks.saturating_sub(before.ticks) as f64 / self.hz as f64 / secs * 100.0)
    }

    /// CPU seconds between two samples of one process.
    pub fn cpu_seconds(&self, before: &Sample, after: &Sample) -> Option<f64> {
        (before.pid == after.pid).then(|| after.ticks.saturating_sub(before.ticks) as f64 / self.hz as f64)
    }
}

fn sample_of(proc_name: &str, pid: u32) -> Option<Sample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{proc_name}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{proc_name}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Sample { at, ticks, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:"), pid })
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// "p50 x, p99 y, max z (n samples)", or why there is none.
pub fn distribution(mut values: Vec<Duration>) -> String {
    values.sort();
    match (quantile(&values, 0.5), quantile(&values, 0.99), values.last()) {
        (Some(p50), Some(p99), Some(max)) => {
            format!("p50 {}, p99 {}, max {} ({} samples)", ms(p50), ms(p99), ms(*max), values.len())
        }
        _ => "no samples".into(),
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&v[..1], 0.99), Some(Duration::from_millis(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let p = Process::new(None);
        let s = p.own().expect("/proc/self");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        assert!(p.sample().is_none(), "no pid file, no controller");
    }
}
