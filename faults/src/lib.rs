//! Fault injection for tests and the chaos run (as Toxiproxy does, in process): a TCP proxy on
//! 127.0.0.1 that forwards to a target until it is cut. Cutting drops every forwarded
//! connection and refuses new ones (they are accepted and closed at once) until restored.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

struct State {
    open: bool,
    /// Cancelled to drop every connection forwarded so far.
    connections: CancellationToken,
}

impl Proxy {
    /// Starts forwarding a fresh port on 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            open: true,
            connections: CancellationToken::new(),
        }));
        let accept = tokio::spawn(accept(listener, target, state.clone()));
        Ok(Proxy {
            addr,
            state,
            accept,
        })
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every forwarded connection and refuses new ones.
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

    pub fn is_cut(&self) -> bool {
        !self.state.lock().expect("proxy state").open
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, state: Arc<Mutex<State>>) {
    loop {
        // Accept errors (EMFILE, a connection reset before accept) end nothing: try again.
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let cut = {
            let state = state.lock().expect("proxy state");
            state.open.then(|| state.connections.clone())
        };
        let Some(cut) = cut else {
            drop(inbound);
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                () = cut.cancelled() => {}
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = socket.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await?;
        Ok(reply.to_vec())
    }

    #[tokio::test]
    async fn forwards_until_cut_and_again_after_restore() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");

        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        proxy.cut();
        assert!(proxy.is_cut());
        let mut rest = Vec::new();
        assert_eq!(
            open.read_to_end(&mut rest).await.unwrap_or(0),
            0,
            "a forwarded connection ends when cut"
        );
        assert!(round_trip(proxy.addr()).await.is_err(), "refused while cut");

        proxy.restore();
        assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");
    }
}
