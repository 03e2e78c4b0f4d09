//! Fault injection for tests and the chaos run (as Toxiproxy does, in process): a TCP proxy on
//! 127.0.0.1 in front of a target that forwards until it is told otherwise. It can cut (drop
//! every forwarded connection and refuse new ones), hold back the target's replies (so a request
//! reaches the target and its answer never comes back), or go silent (accept connections and
//! never answer, as a host behind a dropping firewall does). [`receiver`] is the other side of
//! webhooks: an HTTP server that records requests and answers well or badly on request.

pub mod receiver;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// New connections are accepted and closed at once.
    Cut,
    /// Client bytes still reach the target; the target's bytes are held back.
    HoldReplies,
    /// New connections are accepted and left unanswered.
    Silent,
}

pub struct Proxy {
    addr: SocketAddr,
    control: Arc<Control>,
    accept: JoinHandle<()>,
}

struct Control {
    mode: watch::Sender<Mode>,
    /// Cancelled to drop every connection accepted so far.
    connections: Mutex<CancellationToken>,
    /// Connections being forwarded now.
    open: AtomicUsize,
}

impl Control {
    /// Switches the mode; `drop_open` also ends every connection accepted so far.
    fn set(&self, mode: Mode, drop_open: bool) {
        if drop_open {
            let mut connections = self.connections.lock().expect("proxy state");
            connections.cancel();
            *connections = CancellationToken::new();
        }
        self.mode.send_replace(mode);
    }

    fn connection_token(&self) -> CancellationToken {
        self.connections.lock().expect("proxy state").clone()
    }
}

impl Proxy {
    /// Starts forwarding a fresh port on 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            mode: watch::Sender::new(Mode::Forward),
            connections: Mutex::new(CancellationToken::new()),
            open: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept(listener, target, control.clone()));
        Ok(Proxy {
            addr,
            control,
            accept,
        })
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.control.set(Mode::Cut, true);
    }

    /// Keeps every connection open but stops passing the target's bytes on.
    pub fn hold_replies(&self) {
        self.control.set(Mode::HoldReplies, false);
    }

    /// Drops every connection; new ones are accepted and never answered.
    pub fn silence(&self) {
        self.control.set(Mode::Silent, true);
    }

    /// Drops every connection left (held or silent ones too) and forwards new ones again.
    pub fn restore(&self) {
        self.control.set(Mode::Forward, true);
    }

    pub fn is_cut(&self) -> bool {
        *self.control.mode.borrow() == Mode::Cut
    }

    /// How many connections are being forwarded now.
    pub fn open_connections(&self) -> usize {
        self.control.open.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, control: Arc<Control>) {
    loop {
        // Accept errors (EMFILE, a connection reset before accept) end nothing: try again.
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let mode = control.mode.subscribe();
        let token = control.connection_token();
        match *mode.borrow() {
            Mode::Cut => continue,
            Mode::Silent => {
                tokio::spawn(async move {
                    token.cancelled().await;
                    drop(inbound);
                });
                continue;
            }
            Mode::Forward | Mode::HoldReplies => {}
        }
        let control = control.clone();
        control.open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            // The token first: a restore cancels it before switching the mode, so held bytes are
            // dropped with their connection, never relayed on the way out.
            tokio::select! {
                biased;
                () = token.cancelled() => {}
                () = relay(inbound, target, mode) => {}
            }
            control.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Copies both ways until either side ends; the target's bytes wait while replies are held.
async fn relay(mut client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut up, mut down) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    loop {
        let hold = *mode.borrow_and_update() == Mode::HoldReplies;
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
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

#[cfg(test)]
mod tests;
