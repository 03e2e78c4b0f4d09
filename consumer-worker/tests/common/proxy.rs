//! A TCP proxy on 127.0.0.1 with a switch, to take Postgres or RabbitMQ away from a worker.

use std::sync::{Arc, Mutex};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    addr: String,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

struct State {
    open: bool,
    /// Cancelled to drop every connection forwarded so far.
    connections: CancellationToken,
}

impl Proxy {
    /// Starts forwarding a port on 127.0.0.1 to `target`.
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let state = Arc::new(Mutex::new(State {
            open: true,
            connections: CancellationToken::new(),
        }));
        let accept = tokio::spawn(accept(listener, target.to_owned(), state.clone()));
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// `host:port` to connect to instead of the target.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Drops every forwarded connection and refuses new ones (closes them on accept).
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.open = false;
        state.connections.cancel();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        let mut state = self.state.lock().expect("proxy state");
        state.open = true;
        state.connections = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, target: String, state: Arc<Mutex<State>>) {
    loop {
        let (mut inbound, _) = listener.accept().await.expect("proxy accept");
        let cut = {
            let state = state.lock().expect("proxy state");
            state.open.then(|| state.connections.clone())
        };
        let Some(cut) = cut else {
            drop(inbound);
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(&target).await else {
                return;
            };
            tokio::select! {
                () = cut.cancelled() => {}
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}
