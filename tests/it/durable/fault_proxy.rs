//! A TCP proxy in front of RabbitMQ that can do more than cut: hold back the broker's replies
//! (so that a publish reaches the broker and its confirm does not come back), or go silent
//! (accept connections and never answer, as an unreachable host behind a firewall does).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Client bytes still reach the broker; the broker's bytes are held back.
    HoldReplies,
    /// New connections are accepted and left unanswered.
    Silent,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    /// Bumped to drop every connection accepted so far.
    generation: Arc<watch::Sender<u64>>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(watch::Sender::new(Mode::Forward));
        let generation = Arc::new(watch::Sender::new(0u64));
        let (accept_mode, accept_generation) = (mode.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = accept_mode.subscribe();
                let cut = accept_generation.subscribe();
                tokio::spawn(relay(client, target, mode, cut));
            }
        });
        FaultProxy {
            addr,
            mode,
            generation,
        }
    }

    /// The AMQP URL through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Keeps every connection open but stops passing the broker's bytes on.
    pub fn hold_replies(&self) {
        self.mode.send_replace(Mode::HoldReplies);
    }

    /// Drops every connection; new ones are accepted and never answered.
    pub fn silence(&self) {
        self.mode.send_replace(Mode::Silent);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Drops every connection (held or silent ones too) and forwards new ones again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut cut: watch::Receiver<u64>,
) {
    if *mode.borrow_and_update() == Mode::Silent {
        let _ = cut.changed().await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        let hold = *mode.borrow_and_update() == Mode::HoldReplies;
        tokio::select! {
            _ = cut.changed() => return,
            _ = mode.changed() => {}
            read = client.read(&mut up) => match read {
                Ok(n) if n > 0 => if server.write_all(&up[..n]).await.is_err() { return },
                _ => return,
            },
            read = server.read(&mut down), if !hold => match read {
                Ok(n) if n > 0 => if client.write_all(&down[..n]).await.is_err() { return },
                _ => return,
            },
        }
    }
}
