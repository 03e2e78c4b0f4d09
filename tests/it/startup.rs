//! What a new user meets when running the binary: default admin ports that let a gateway and
//! a worker share a host, start-up errors that print each cause once without credentials, and
//! a listener that survives running out of file descriptors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::processes::{failing_start, Deployment, Node, BIN};

/// Waits until `http://127.0.0.1:{port}{path}` answers `status`.
async fn wait_for_status(port: u16, path: &str, status: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await;
        if answer.is_ok_and(|r| r.status() == status) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: no {status} on {path}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_gateway_and_a_worker_with_default_admin_ports_both_come_up() {
    // The defaults are fixed ports: say so plainly if something else holds them.
    for port in [9601, 9602] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken by another program; this test needs it free"
        );
    }
    let deployment = Deployment::new();
    let mut nodes = Vec::new();
    for role in ["gateway", "worker"] {
        let (mut command, http, admin) = deployment.command(role);
        command.env_remove("SWITCHBOARD_ADMIN_BIND");
        let child = command.spawn().expect("switchboard binary runs");
        nodes.push(Node { child, http, admin });
    }
    wait_for_status(9601, "/ready", 200, "gateway").await;
    wait_for_status(9602, "/ready", 200, "worker").await;
    for node in &mut nodes {
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "both processes keep running"
        );
    }
    let worker_ready: serde_json::Value = reqwest::get("http://127.0.0.1:9602/ready")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(worker_ready.get("database").is_some(), "{worker_ready}");
    drop(nodes);
    deployment.cleanup().await;
}

#[tokio::test]
async fn start_up_errors_print_each_cause_once_and_no_password() {
    let deployment = Deployment::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = failing_start(&deployment, &[("SWITCHBOARD_BIND", &addr)]).await;
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );

    let stderr = failing_start(&deployment, &[("SWITCHBOARD_BINDD", "127.0.0.1:1")]).await;
    assert_eq!(stderr.matches("unknown field").count(), 1, "{stderr}");
    assert!(stderr.contains("bindd"), "{stderr}");

    let stderr = failing_start(
        &deployment,
        &[(
            "DATABASE_URL",
            "mysql://admin:hunter2@db.example/x?password=hunter3",
        )],
    )
    .await;
    assert!(
        stderr.contains("database_url") && stderr.contains("db.example"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2") && !stderr.contains("hunter3"),
        "{stderr}"
    );
    drop(taken);
    deployment.cleanup().await;
}

/// Lines the process writes, collected by a thread.
fn collect_lines(output: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

#[tokio::test]
async fn running_out_of_file_descriptors_does_not_end_the_listener() {
    const FD_LIMIT: usize = 128;
    let deployment = Deployment::new();
    let (inner, http, admin) = deployment.command("gateway");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -n {FD_LIMIT} && exec \"$0\" gateway"))
        .arg(BIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in inner.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let mut child = command.spawn().unwrap();
    // The log goes to stdout.
    let lines = collect_lines(child.stdout.take().unwrap());
    let node = Node { child, http, admin };
    wait_for_status(admin, "/ready", 200, "gateway").await;

    // More connections than the process has descriptors: accept fails with EMFILE.
    let mut clients = Vec::new();
    for _ in 0..FD_LIMIT * 2 {
        clients.push(TcpStream::connect(node.http()).await.unwrap());
    }
    let logged = |needle: &str| {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("accept failed") && line.contains(needle))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logged("Too many open files") {
        assert!(
            Instant::now() < deadline,
            "no accept error logged: {:?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Once the descriptors are free again, the same listener serves.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = get_status(node.http()).await {
            assert_eq!(status, 404);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway listener stopped serving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_status(admin, "/ready", 200, "gateway after EMFILE").await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"switchboard_accept_errors_total{listener="gateway"}"#),
        "{metrics}"
    );
    drop(node);
    deployment.cleanup().await;
}

/// `GET /favicon.ico` on a fresh connection; `None` when the connection fails.
async fn get_status(addr: std::net::SocketAddr) -> Option<u16> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        String::from_utf8_lossy(&answer)
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}
