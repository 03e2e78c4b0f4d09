//! What the kernel says about the measured processes: CPU time (`/proc/PID/stat` utime + stime),
//! resident memory (`/proc/PID/status` VmRSS), the process listening on a port, RabbitMQ's
//! `beam.smp`. Also the Prometheus text the server's admin port serves.

use std::fmt;
use std::fs;
use std::process::Command;

use anyhow::{bail, Context};

/// The CPU time of a process in clock ticks: (utime, stime) from the text of `/proc/PID/stat`.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) is in parentheses and may contain spaces: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// (utime, stime) of a process, in clock ticks.
fn user_and_system_ticks(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_ticks(&stat).with_context(|| format!("unexpected format of {path}"))
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    user_and_system_ticks(pid).map(|(user, system)| user + system)
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss_kib(&status).with_context(|| format!("no VmRSS in {path}"))
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`).
pub fn ticks_per_second() -> anyhow::Result<f64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))
}

fn pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Every process whose command name (`/proc/PID/comm`) is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    pids()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .collect()
}

/// The socket inode of a TCP socket listening on `port`, from the text of `/proc/net/tcp[6]`.
pub fn parse_listening_inode(net_tcp: &str, port: u16) -> Option<u64> {
    net_tcp.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit_once(':')?.1;
        let listening = *fields.get(3)? == "0A";
        (listening && u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

/// The process that owns the socket listening on `port`.
pub fn pid_listening_on(port: u16) -> anyhow::Result<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .find_map(|text| parse_listening_inode(&text, port))
        .with_context(|| format!("no process listens on port {port}"))?;
    let wanted = format!("socket:[{inode}]");
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|target| target.to_str() == Some(&wanted)) {
                return Ok(pid);
            }
        }
    }
    bail!("the socket listening on port {port} belongs to no process we can see")
}

/// Busy and total time of the whole machine, in clock ticks, from the `cpu` line of `/proc/stat`.
pub fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_ticks(&stat).context("unexpected format of /proc/stat")
}

/// CPU time of the server process(es), RabbitMQ (unless the server uses none), Postgres and this
/// tool, sampled together.
pub struct CpuMeter {
    server: Vec<u32>,
    broker: Vec<u32>,
    database: Vec<u32>,
    ticks_per_second: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    server: u64,
    /// The part of `server` spent in user space.
    server_user: u64,
    broker: u64,
    database: u64,
    own: u64,
    machine_busy: u64,
    machine_total: u64,
}

/// CPU seconds spent between two samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuUsed {
    pub server: f64,
    /// The part of `server` spent in user space (the rest is the kernel's: system calls, the
    /// TCP stack).
    pub server_user: f64,
    pub broker: f64,
    /// Postgres processes that lived through the whole measurement (backends that came and went
    /// in between are not counted).
    pub database: f64,
    pub own: f64,
    /// Everything else that ran on the machine meanwhile (other users' builds and tests).
    pub others: f64,
    pub idle: f64,
}

impl fmt::Display for CpuUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} (idle {:.2})",
            self.server, self.broker, self.database, self.own, self.others, self.idle
        )
    }
}

impl CpuUsed {
    /// The label of the [`fmt::Display`] form.
    pub const LABEL: &'static str = "CPU s: server / RabbitMQ / Postgres / bench / others";

    /// Server + broker CPU per unit of work, in microseconds (the server's alone without a
    /// broker).
    pub fn us_per(&self, units: u64) -> f64 {
        if units == 0 {
            return f64::NAN;
        }
        (self.server + self.broker) * 1e6 / units as f64
    }
}

impl CpuMeter {
    pub fn new(server: Vec<u32>, broker: Option<u32>) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter {
            server,
            broker: broker.into_iter().collect(),
            database: pids_named("postgres"),
            ticks_per_second: ticks_per_second()?,
        })
    }

    pub fn sample(&self) -> anyhow::Result<CpuSample> {
        let sum =
            |pids: &[u32]| -> anyhow::Result<u64> { pids.iter().map(|&pid| cpu_ticks(pid)).sum() };
        // One read of each server process's stat gives both its user and its total time.
        let (mut server, mut server_user) = (0, 0);
        for &pid in &self.server {
            let (user, system) = user_and_system_ticks(pid)?;
            server += user + system;
            server_user += user;
        }
        // Postgres backends end with their connections: count those still there.
        let database = self
            .database
            .iter()
            .filter_map(|&pid| cpu_ticks(pid).ok())
            .sum();
        let (machine_busy, machine_total) = machine_ticks()?;
        Ok(CpuSample {
            server,
            server_user,
            broker: sum(&self.broker)?,
            database,
            own: cpu_ticks(std::process::id())?,
            machine_busy,
            machine_total,
        })
    }

    pub fn used(&self, from: CpuSample, to: CpuSample) -> CpuUsed {
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / self.ticks_per_second;
        let (server, broker, database, own) = (
            secs(from.server, to.server),
            secs(from.broker, to.broker),
            secs(from.database, to.database),
            secs(from.own, to.own),
        );
        let busy = secs(from.machine_busy, to.machine_busy);
        let total = secs(from.machine_total, to.machine_total);
        CpuUsed {
            server,
            server_user: secs(from.server_user, to.server_user),
            broker,
            database,
            own,
            others: (busy - server - broker - database - own).max(0.0),
            idle: total - busy,
        }
    }
}

/// Sum of every series of metric `name` (any labels) in Prometheus text format.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split_once('{').map_or(series, |(m, _)| m);
            (metric == name).then(|| value.parse().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_count_from_the_last_parenthesis() {
        let stat = "1234 (tokio (worker) 1) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some((250, 75)));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn machine_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1\n";
        assert_eq!(parse_machine_ticks(stat), Some((161, 1181)));
        assert_eq!(parse_machine_ticks("cpu0 1 2\n"), None);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tswitchboard\nVmPeak:\t  200000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn finds_the_listening_socket_inode() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2581 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:2581 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_listening_inode(tcp, 9601), Some(4242));
        assert_eq!(parse_listening_inode(tcp, 6001), None);
    }

    #[test]
    fn metrics_sum_series_of_one_name() {
        let text = "# TYPE switchboard_deliveries_total counter\nswitchboard_deliveries_total 1500\nswitchboard_events_in_total{source=\"api\"} 10\nswitchboard_events_in_total{source=\"client\"} 5\nswitchboard_publish_batch_envelopes_sum 640\nswitchboard_publish_batch_envelopes_count 20\n";
        assert_eq!(metric(text, "switchboard_deliveries_total"), Some(1500.0));
        assert_eq!(metric(text, "switchboard_events_in_total"), Some(15.0));
        assert_eq!(
            metric(text, "switchboard_publish_batch_envelopes_sum"),
            Some(640.0)
        );
        assert_eq!(metric(text, "switchboard_publish_batch_envelopes"), None);
        assert_eq!(metric(text, "absent"), None);
    }

    #[test]
    fn this_process_is_measurable() {
        assert!(cpu_ticks(std::process::id()).is_ok());
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
