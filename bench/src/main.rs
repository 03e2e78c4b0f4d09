//! `switchboard-bench`: load scenarios against a running Switchboard (Pusher WebSocket protocol
//! and signed HTTP API), with CPU and memory of the server read from `/proc`, and baselines of
//! the parts it is built on (RabbitMQ publish with confirms, Postgres COPY). See BENCHMARKS.md.

mod api;
mod baseline;
mod chaos;
mod client_events;
mod connections;
mod fanout;
mod history_query;
mod ingest;
mod payload;
mod procfs;
mod segment_memory;
mod stats;
mod webhooks;
mod windows;
mod ws;

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Load scenarios and baselines for a running Switchboard"
)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args)]
struct TargetArgs {
    /// Base URL of the gateway (WebSocket and HTTP API).
    #[arg(long, global = true, default_value = "http://127.0.0.1:6001")]
    http: String,
    /// Further gateways of the same cluster (repeatable): WebSocket connections are spread over
    /// `--http` and these, round robin; HTTP API calls still go to `--http`.
    #[arg(long = "also-http", global = true)]
    also_http: Vec<String>,
    /// Base URL of the admin listener (`/metrics`).
    #[arg(long, global = true, default_value = "http://127.0.0.1:9601")]
    admin: String,
    #[arg(long, global = true, default_value = "app-id")]
    app_id: String,
    #[arg(long, global = true, default_value = "app-key")]
    key: String,
    #[arg(long, global = true, default_value = "app-secret")]
    secret: String,
    /// Server process(es) whose CPU and memory are measured (repeatable); default: the process
    /// listening on the admin port.
    #[arg(long = "server-pid", global = true)]
    server_pids: Vec<u32>,
    /// RabbitMQ's process (whose CPU is counted with the server's); default: the process
    /// listening on --amqp-port (not any `beam.smp`: each rabbitmqctl run is one too).
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    #[arg(long, global = true, default_value_t = 5672)]
    amqp_port: u16,
    /// The server under test is another Pusher server, not Switchboard (e.g. sockudo): its
    /// metrics are not read, no RabbitMQ CPU is counted, --server-pid is required. Runs fanout,
    /// connections and ingest --mode trigger|batch only.
    #[arg(long, global = true)]
    peer: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// N subscribers over C channels; events triggered over the HTTP API at a rate.
    Fanout(fanout::FanoutArgs),
    /// N idle subscribed connections: time to open, server memory per connection.
    Connections(connections::ConnectionsArgs),
    /// Events through the HTTP API as fast as possible, until they are all in Postgres; then the
    /// RabbitMQ and COPY baselines.
    Ingest(ingest::IngestArgs),
    /// The Segment batches of `ingest --mode segment` as `switchboard:track` frames over K
    /// WebSockets, until they are all in Postgres (exactly once).
    WsTrack(ingest::LoadArgs),
    /// Recovery queries (history) against a scratch database filled with millions of rows.
    HistoryQuery(history_query::HistoryQueryArgs),
    /// Connections on presence channels exchanging client events.
    ClientEvents(client_events::ClientEventsArgs),
    /// Server memory per Segment request (as a multiple of its body) and WebSocket ping round
    /// trips while big gzip batches of one shape arrive.
    SegmentMemory(segment_memory::SegmentMemoryArgs),
    /// Starts its own two gateways and two workers and injects faults while events of every
    /// kind flow; fails unless nothing acknowledged was lost or doubled (RELIABILITY.md).
    Chaos(chaos::ChaosArgs),
    /// Client events on private channels become `client_event` webhooks, delivered to a receiver
    /// inside the bench; against RabbitMQ publish with confirms.
    WebhookDelivery(webhooks::DeliveryArgs),
    /// The fan-out scenario on an app without webhooks, then on one with a webhook for types the
    /// fan-out never produces.
    WebhookCost(webhooks::CostArgs),
}

impl Cli {
    /// Refuses `--peer` where a Pusher server without Switchboard's admin port, metrics, broker
    /// and database cannot be measured.
    fn check_peer(&self) -> anyhow::Result<()> {
        if !self.target.peer {
            return Ok(());
        }
        anyhow::ensure!(
            matches!(
                self.scenario,
                Scenario::Fanout(_) | Scenario::Connections(_) | Scenario::Ingest(_)
            ),
            "--peer runs only fanout, connections and ingest (--mode trigger or batch)"
        );
        anyhow::ensure!(
            !self.target.server_pids.is_empty(),
            "--peer needs --server-pid: a peer server has no admin port to find its process by"
        );
        anyhow::ensure!(
            self.target.broker_pid.is_none(),
            "--peer counts no RabbitMQ CPU: leave out --broker-pid"
        );
        Ok(())
    }
}

/// What a report shows for a figure only Switchboard's metrics, database or broker give.
pub const PEER_NA: &str = "n/a (peer)";

/// The server under test.
#[derive(Clone)]
pub struct Target {
    pub http: String,
    pub ws_addr: SocketAddr,
    /// Where WebSocket connections go, round robin: `ws_addr` first, then `--also-http`.
    pub ws_addrs: Vec<SocketAddr>,
    pub admin: String,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    pub server_pids: Vec<u32>,
    /// RabbitMQ's process; none for a peer server.
    broker_pid: Option<u32>,
    /// Not Switchboard (`--peer`): its metrics are not read.
    pub peer: bool,
    admin_client: reqwest::Client,
}

/// `host:port` of an `http://host:port[/…]` URL.
fn host_port(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    Some(
        rest.split_once('/')
            .map_or(rest, |(authority, _)| authority),
    )
}

impl Target {
    fn new(args: TargetArgs) -> anyhow::Result<Target> {
        let ws_addrs = std::iter::once(&args.http)
            .chain(&args.also_http)
            .map(|url| {
                let authority = host_port(url).context("--http must be http://HOST:PORT")?;
                authority.parse().with_context(|| {
                    format!("--http must name an IP address and port, not {authority}")
                })
            })
            .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
        let ws_addr = ws_addrs[0];
        let server_pids = if args.server_pids.is_empty() {
            let admin: SocketAddr = host_port(&args.admin)
                .context("--admin must be http://HOST:PORT")?
                .parse()
                .context("--admin must name an IP address and port")?;
            vec![procfs::pid_listening_on(admin.port())
                .context("finding the server process (or pass --server-pid)")?]
        } else {
            args.server_pids
        };
        let broker_pid = if args.peer {
            None
        } else {
            Some(match args.broker_pid {
                Some(pid) => pid,
                None => procfs::pid_listening_on(args.amqp_port)
                    .context("finding RabbitMQ (or pass --broker-pid)")?,
            })
        };
        Ok(Target {
            http: args.http,
            ws_addr,
            ws_addrs,
            admin: args.admin.trim_end_matches('/').to_owned(),
            app_id: args.app_id,
            key: args.key,
            secret: args.secret,
            server_pids,
            broker_pid,
            peer: args.peer,
            admin_client: reqwest::Client::new(),
        })
    }

    /// The server's Prometheus metrics text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.admin);
        let response = self
            .admin_client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        Ok(response.error_for_status()?.text().await?)
    }

    /// [`Target::metrics`], or none against a peer server (`--peer`): its metrics are not
    /// Switchboard's.
    pub async fn switchboard_metrics(&self) -> anyhow::Result<Option<String>> {
        if self.peer {
            return Ok(None);
        }
        self.metrics().await.map(Some)
    }

    /// One metric (summed over its labels), 0 when the server has not recorded it yet.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(procfs::metric(&self.metrics().await?, name).unwrap_or(0.0))
    }

    /// Resident memory of the server process(es), KiB.
    pub fn server_rss_kib(&self) -> anyhow::Result<u64> {
        self.server_pids
            .iter()
            .map(|&pid| procfs::rss_kib(pid))
            .sum()
    }

    /// RabbitMQ's process, for the baselines (which `--peer` refuses).
    pub fn broker_pid(&self) -> anyhow::Result<u32> {
        self.broker_pid
            .context("a peer server (--peer) has no RabbitMQ")
    }

    pub fn cpu_meter(&self) -> anyhow::Result<procfs::CpuMeter> {
        procfs::CpuMeter::new(self.server_pids.clone(), self.broker_pid)
    }
}

/// A short random tag that keeps channel and event names of one run apart from any other.
pub fn run_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let outcome = runtime.block_on(async {
        cli.check_peer()?;
        let report = match cli.scenario {
            Scenario::Chaos(args) => chaos::run(args).await?,
            Scenario::HistoryQuery(args) => history_query::run(args).await?,
            scenario => {
                let target = Target::new(cli.target)?;
                match scenario {
                    Scenario::Fanout(args) => fanout::run(&target, args).await?,
                    Scenario::Connections(args) => connections::run(&target, args).await?,
                    Scenario::Ingest(args) => ingest::run(&target, args).await?,
                    Scenario::WsTrack(args) => ingest::ws_track(&target, args).await?,
                    Scenario::ClientEvents(args) => client_events::run(&target, args).await?,
                    Scenario::SegmentMemory(args) => segment_memory::run(&target, args).await?,
                    Scenario::WebhookDelivery(args) => webhooks::delivery(&target, args).await?,
                    Scenario::WebhookCost(args) => webhooks::cost(&target, args).await?,
                    Scenario::Chaos(_) | Scenario::HistoryQuery(_) => {
                        unreachable!("handled above")
                    }
                }
            }
        };
        println!("{report}");
        anyhow::Ok(())
    });
    // Thousands of sockets may still be open: do not wait for their tasks.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("http://127.0.0.1:6001"), Some("127.0.0.1:6001"));
        assert_eq!(host_port("http://127.0.0.1:6001/"), Some("127.0.0.1:6001"));
        assert_eq!(host_port("https://x"), None);
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("switchboard-bench").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn peer_needs_the_server_pid_and_no_broker() {
        assert!(cli(&["fanout"]).check_peer().is_ok());
        assert!(cli(&["--peer", "--server-pid", "7", "fanout"])
            .check_peer()
            .is_ok());
        let error = cli(&["--peer", "fanout"]).check_peer().unwrap_err();
        assert!(error.to_string().contains("--server-pid"), "{error}");
        let error = cli(&["fanout", "--peer", "--server-pid", "7", "--broker-pid", "8"])
            .check_peer()
            .unwrap_err();
        assert!(error.to_string().contains("--broker-pid"), "{error}");
    }

    #[test]
    fn peer_runs_only_the_pusher_scenarios() {
        for scenario in ["fanout", "connections", "ingest"] {
            assert!(cli(&["--peer", "--server-pid", "7", scenario])
                .check_peer()
                .is_ok());
        }
        for scenario in ["ws-track", "client-events", "segment-memory"] {
            let error = cli(&["--peer", "--server-pid", "7", scenario])
                .check_peer()
                .unwrap_err();
            assert!(error.to_string().contains("only fanout"), "{error}");
        }
    }

    #[test]
    fn run_tags_differ() {
        assert_eq!(run_tag().len(), 8);
        assert_ne!(run_tag(), run_tag());
    }
}
