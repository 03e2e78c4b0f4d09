//! The deployment under test: the real `switchboard` binary as two gateways and two workers,
//! each with its own TCP proxy in front of RabbitMQ (so one role's link can be cut), the workers
//! behind one proxy to Postgres, a fresh database and a fresh queue prefix.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use faults::Proxy;

use crate::procfs;

/// How long a process may take to answer `/ready` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The roles of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Worker,
}

impl Role {
    fn command(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Worker => "worker",
        }
    }
}

/// One switchboard process, restartable on the same ports.
pub struct Process {
    pub name: &'static str,
    pub role: Role,
    pub http: SocketAddr,
    admin: SocketAddr,
    pub amqp: Proxy,
    child: Option<Child>,
    /// Highest resident memory seen, KiB, over every run of this process.
    rss_high_kib: AtomicU64,
}

pub struct Deployment {
    bin: PathBuf,
    log_dir: PathBuf,
    pub prefix: String,
    pub database: String,
    /// Postgres as the workers reach it: through the proxy.
    pub postgres: Proxy,
    postgres_endpoint: Endpoint,
    amqp_endpoint: Endpoint,
    pub processes: Vec<Process>,
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A server URL split around its `host:port`, so it can be pointed at a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://user:password@`
    head: String,
    pub addr: SocketAddr,
    /// What follows the authority (`/%2f`), possibly empty.
    tail: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let after_scheme = url.find("://").context("a URL needs a scheme")? + 3;
        let host_at = url[after_scheme..]
            .split('/')
            .next()
            .and_then(|authority| authority.rfind('@'))
            .map_or(after_scheme, |at| after_scheme + at + 1);
        let tail_at = url[host_at..].find('/').map_or(url.len(), |i| host_at + i);
        let authority = &url[host_at..tail_at];
        Ok(Endpoint {
            head: url[..host_at].to_owned(),
            addr: authority
                .parse()
                .with_context(|| format!("{authority:?} must be an IP address and port"))?,
            tail: url[tail_at..].to_owned(),
        })
    }

    /// The URL with `addr` instead of its own address and `path` instead of its own.
    pub fn url(&self, addr: SocketAddr, path: Option<&str>) -> String {
        format!("{}{addr}{}", self.head, path.unwrap_or(&self.tail))
    }
}

impl Deployment {
    /// Proxies and names for a run; starts nothing yet. `postgres_url` and `amqp_url` name the
    /// real servers (`postgres://user@127.0.0.1:5432`, `amqp://guest:guest@127.0.0.1:5672/%2f`).
    pub async fn new(
        bin: &Path,
        log_dir: &Path,
        tag: &str,
        postgres_url: &str,
        amqp_url: &str,
    ) -> anyhow::Result<Deployment> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let postgres_endpoint = Endpoint::parse(postgres_url)?;
        let amqp_endpoint = Endpoint::parse(amqp_url)?;
        let postgres = Proxy::start(postgres_endpoint.addr).await?;
        let mut processes = Vec::new();
        for (name, role) in [
            ("gateway-a", Role::Gateway),
            ("gateway-b", Role::Gateway),
            ("worker-1", Role::Worker),
            ("worker-2", Role::Worker),
        ] {
            processes.push(Process {
                name,
                role,
                http: free_port()?,
                admin: free_port()?,
                amqp: Proxy::start(amqp_endpoint.addr).await?,
                child: None,
                rss_high_kib: AtomicU64::new(0),
            });
        }
        Ok(Deployment {
            bin: bin.to_owned(),
            log_dir: log_dir.to_owned(),
            prefix: format!("chaos{tag}"),
            database: format!("switchboard_chaos_{tag}"),
            postgres,
            postgres_endpoint,
            amqp_endpoint,
            processes,
        })
    }

    /// The run's database, reached directly (not through the proxy).
    pub fn database_url(&self) -> String {
        let path = format!("/{}", self.database);
        self.postgres_endpoint
            .url(self.postgres_endpoint.addr, Some(&path))
    }

    /// The `postgres` maintenance database, reached directly.
    pub fn admin_database_url(&self) -> String {
        self.postgres_endpoint
            .url(self.postgres_endpoint.addr, Some("/postgres"))
    }

    /// RabbitMQ, reached directly.
    pub fn amqp_url(&self) -> String {
        self.amqp_endpoint.url(self.amqp_endpoint.addr, None)
    }

    pub fn process(&self, name: &str) -> &Process {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .expect("a process of the deployment")
    }

    fn process_mut(&mut self, name: &str) -> &mut Process {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .expect("a process of the deployment")
    }

    /// The gateways' client-facing addresses.
    pub fn gateways(&self) -> Vec<SocketAddr> {
        self.processes
            .iter()
            .filter(|p| p.role == Role::Gateway)
            .map(|p| p.http)
            .collect()
    }

    /// Starts `name` and waits until its `/ready` answers 200.
    pub async fn start(&mut self, name: &str) -> anyhow::Result<()> {
        let log = self.log_dir.join(format!("{name}.log"));
        let path = format!("/{}", self.database);
        let database_url = self
            .postgres_endpoint
            .url(self.postgres.addr(), Some(&path));
        let bin = self.bin.clone();
        let prefix = self.prefix.clone();
        let amqp = self.amqp_endpoint.clone();
        let process = self.process_mut(name);
        let amqp_url = amqp.url(process.amqp.addr(), None);
        let stderr: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(&bin)
            .arg(process.role.command())
            .env("DATABASE_URL", database_url)
            .env("AMQP_URL", amqp_url)
            .env("SWITCHBOARD_AMQP_PREFIX", prefix)
            .env("SWITCHBOARD_BIND", process.http.to_string())
            .env("SWITCHBOARD_ADMIN_BIND", process.admin.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        process.child = Some(child);
        process.wait_ready().await
    }

    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        // A worker first: it creates and migrates the database.
        for name in ["worker-1", "worker-2", "gateway-a", "gateway-b"] {
            self.start(name).await?;
        }
        Ok(())
    }

    /// `kill -9`.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let process = self.process_mut(name);
        let mut child = process.child.take().context("the process is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit; fails unless it exits 0 within `limit`.
    pub async fn terminate(&mut self, name: &str, limit: Duration) -> anyhow::Result<Duration> {
        let process = self.process_mut(name);
        let mut child = process.child.take().context("the process is not running")?;
        let started = Instant::now();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("{name} exited with {status} after SIGTERM");
                }
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                bail!("{name} did not exit within {limit:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERMs every running process (gateways first), each must exit 0.
    pub async fn stop_all(&mut self, limit: Duration) -> anyhow::Result<()> {
        let names: Vec<&'static str> = self.processes.iter().map(|p| p.name).collect();
        for name in names {
            if self.process(name).child.is_some() {
                self.terminate(name, limit).await?;
            }
        }
        Ok(())
    }

    /// Records the resident memory of every running process; returns their sum, KiB.
    pub fn sample_memory(&self) -> u64 {
        self.processes
            .iter()
            .filter_map(|p| {
                let rss = procfs::rss_kib(p.child.as_ref()?.id()).ok()?;
                p.rss_high_kib.fetch_max(rss, Ordering::Relaxed);
                Some(rss)
            })
            .sum()
    }
}

impl Process {
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/ready", self.admin);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} was not ready within {READY_TIMEOUT:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn rss_high_kib(&self) -> u64 {
        self.rss_high_kib.load(Ordering::Relaxed)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for process in &mut self.processes {
            if let Some(mut child) = process.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_point_at_another_address() {
        let proxy: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let pg = Endpoint::parse("postgres://postgres@127.0.0.1:5432").unwrap();
        assert_eq!(pg.addr, "127.0.0.1:5432".parse().unwrap());
        assert_eq!(
            pg.url(proxy, Some("/db")),
            "postgres://postgres@127.0.0.1:7000/db"
        );
        let amqp = Endpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            amqp.url(proxy, None),
            "amqp://guest:guest@127.0.0.1:7000/%2f"
        );
        assert_eq!(
            Endpoint::parse("amqp://127.0.0.1:5672")
                .unwrap()
                .url(proxy, None),
            "amqp://127.0.0.1:7000"
        );
        assert!(Endpoint::parse("postgres://localhost:5432").is_err());
        assert!(Endpoint::parse("127.0.0.1:5432").is_err());
    }
}
