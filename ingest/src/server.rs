//! The HTTP edge shared by the gateway and the admin listener: the accept loop, the connection
//! limit and its refusal, TLS handshakes, and one hyper HTTP/1.1 connection per client with a
//! header-read timeout, an idle keep-alive timeout, upgrades (WebSockets) and graceful shutdown.
//!
//! An accept error never ends the loop: it is counted, logged (at most every few seconds) and,
//! unless the client merely gave up first, followed by a growing pause (file descriptors
//! exhausted heal only when connections close). The loop ends only at shutdown; [`Liveness`]
//! tells `/ready` if it ever ends otherwise.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::Http;
use hyper::service::Service;
use hyper::{Body, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::RETRY_AFTER_SECS;
use crate::forwarded::PeerAddr;
use crate::tls::Tls;

/// Timeouts and the connection limit of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request head must arrive whole within this long of its first byte (of the connection's
    /// start, for the first request; of the TLS handshake's start, for the handshake).
    pub header_read_timeout: Duration,
    /// A keep-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
    /// Open connections (WebSockets included) beyond which new ones are refused.
    pub max_connections: usize,
}

/// One listening socket and how to serve it.
pub struct Listener {
    /// `gateway` or `admin`: the `listener` label of the metrics, and in logs.
    pub name: &'static str,
    pub socket: TcpListener,
    pub limits: Limits,
    pub tls: Option<Arc<Tls>>,
    pub liveness: Liveness,
}

/// True while its listener's accept loop runs; false once the loop has ended for any reason
/// (shutdown, a panic, the task aborted), since the loop owns it.
pub struct Liveness(Arc<AtomicBool>);

impl Liveness {
    pub fn started() -> Liveness {
        Liveness(Arc::new(AtomicBool::new(true)))
    }

    /// A check of this listener for `/ready`.
    pub fn probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let up = self.0.clone();
        move || up.load(Ordering::Relaxed)
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Connections refused at the limit that are answered at once; beyond, they are just closed.
const REFUSALS_AT_ONCE: usize = 64;
/// How long a refused connection is kept to deliver its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one log line per this long for a recurring accept error or refusal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` until `shutdown`: then stops accepting, lets idle
/// connections close and in-flight requests finish, and returns when every connection it
/// served has ended (upgraded connections are handed over, so WebSockets do not hold it).
pub async fn serve<S>(listener: Listener, service: S, shutdown: CancellationToken)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let Listener {
        name,
        socket,
        limits,
        tls,
        liveness,
    } = listener;
    // Exposed at 0 from the start, so a rate over them is defined before the first one.
    for counter in [
        "switchboard_accept_errors_total",
        "switchboard_connections_refused_total",
    ] {
        metrics::counter!(counter, "listener" => name).increment(0);
    }
    for phase in TIMEOUT_PHASES {
        metrics::counter!("switchboard_http_timeouts_total", "listener" => name, "phase" => phase)
            .increment(0);
    }
    let shared = Arc::new(Shared { name, limits, tls });
    let connections = TaskTracker::new();
    let open = Arc::new(Semaphore::new(shared.limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let refusal: Arc<[u8]> = refusal_response().into();
    let mut accept_errors = Throttle::default();
    let mut refusals = Throttle::default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = FIRST_BACKOFF;
                accepted
            }
            Err(error) => {
                metrics::counter!("switchboard_accept_errors_total", "listener" => name)
                    .increment(1);
                let gave_up = is_connection_error(&error);
                if let Some(count) = accept_errors.tick() {
                    tracing::warn!(listener = name, %error, count, "accept failed; the listener goes on");
                }
                if !gave_up {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                continue;
            }
        };
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                connections.spawn(connection(
                    stream,
                    peer,
                    permit,
                    service.clone(),
                    shared.clone(),
                    shutdown.clone(),
                ));
            }
            Err(_) => {
                metrics::counter!("switchboard_connections_refused_total", "listener" => name)
                    .increment(1);
                if let Some(count) = refusals.tick() {
                    let max_connections = shared.limits.max_connections;
                    tracing::warn!(
                        listener = name,
                        max_connections,
                        count,
                        "connection limit reached; new connections are refused"
                    );
                }
                // A TLS client would not read a plaintext answer: it is closed at once.
                let answer = shared
                    .tls
                    .is_none()
                    .then(|| refusing.clone().try_acquire_owned());
                if let Some(Ok(slot)) = answer {
                    connections.spawn(refuse(stream, refusal.clone(), slot));
                }
            }
        }
    }
    drop(socket);
    drop(liveness);
    connections.close();
    connections.wait().await;
}

/// What every connection of one listener shares.
struct Shared {
    name: &'static str,
    limits: Limits,
    tls: Option<Arc<Tls>>,
}

/// The client closed or reset the connection before it was accepted: nothing to wait for.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

/// The answer to a connection over the limit: `503` with `Retry-After`, then close.
fn refusal_response() -> Vec<u8> {
    let body = r#"{"error":"too many connections; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes the refusal, closes our side and reads what the client sent until it closes too (so
/// that closing does not reset the connection before the client read the answer).
async fn refuse(mut stream: TcpStream, answer: Arc<[u8]>, _slot: OwnedSemaphorePermit) {
    let deliver = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    // Whatever happens, the connection is closed when this returns.
    let _ = tokio::time::timeout(REFUSAL_LINGER, deliver).await;
}

/// Logs the first occurrence, then at most one line per [`LOG_EVERY`] with the count since.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    count: u64,
}

impl Throttle {
    fn tick(&mut self) -> Option<u64> {
        self.count += 1;
        let due = self.last.is_none_or(|last| last.elapsed() >= LOG_EVERY);
        due.then(|| {
            self.last = Some(Instant::now());
            std::mem::take(&mut self.count)
        })
    }
}

async fn connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    service: S,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // Frames are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let Some(tls) = &shared.tls else {
        return drive(Io::new(stream, permit), peer, service, &shared, shutdown).await;
    };
    let handshake = tokio::time::timeout(
        shared.limits.header_read_timeout,
        tls.acceptor().accept(stream),
    );
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return,
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(listener = shared.name, %peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                timed_out(&shared, "handshake");
                return;
            }
        },
    };
    drive(Io::new(stream, permit), peer, service, &shared, shutdown).await;
}

/// The `phase` label of `switchboard_http_timeouts_total`.
const TIMEOUT_PHASES: [&str; 3] = ["header", "idle", "handshake"];

fn timed_out(shared: &Shared, phase: &'static str) {
    metrics::counter!("switchboard_http_timeouts_total", "listener" => shared.name, "phase" => phase)
        .increment(1);
}

/// Serves HTTP/1.1 on one connection until it closes, is upgraded, times out or, after
/// shutdown, has finished its in-flight request.
async fn drive<T, S>(
    io: Io<T>,
    peer: SocketAddr,
    service: S,
    shared: &Shared,
    shutdown: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = io.activity.clone();
    let per_request = activity.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Body>| {
        request.extensions_mut().insert(PeerAddr(peer));
        let busy = per_request.busy();
        let response = service.clone().call(request);
        async move {
            let response = response.await;
            drop(busy);
            response
        }
    });
    let connection = Http::new()
        .http1_only(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    let limits = &shared.limits;
    let mut draining = false;
    loop {
        // While a request is answered there is no deadline: look again after a while.
        let next_check = activity
            .deadline(limits)
            .map_or(Instant::now() + limits.header_read_timeout, |(at, _)| at);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(listener = shared.name, %peer, %error, "HTTP connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(next_check) => {
                if let Some((at, phase)) = activity.deadline(limits) {
                    if at <= Instant::now() {
                        timed_out(shared, phase);
                        // Dropping the connection closes the socket.
                        return;
                    }
                }
            }
        }
    }
}

/// What a connection is doing, for its timeouts, in one word: the phase in the top two bits,
/// and in the rest the milliseconds from the connection's start to when that phase began.
struct Activity {
    opened: Instant,
    state: AtomicU64,
}

/// A request head is expected (the first one, or bytes of the next one arrived).
const HEAD: u64 = 0;
/// Between requests of a keep-alive connection.
const IDLE: u64 = 1 << 62;
/// A request is being answered.
const BUSY: u64 = 2 << 62;
const PHASE: u64 = 3 << 62;

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            state: AtomicU64::new(HEAD),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(!PHASE) & !PHASE
    }

    /// Bytes arrived: on an idle connection they are the start of the next request head.
    fn read(&self) {
        let state = self.state.load(Ordering::Relaxed);
        if state & PHASE == IDLE {
            let _ = self.state.compare_exchange(
                state,
                HEAD | self.now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A request head was parsed; the connection is idle again when the guard drops.
    fn busy(self: &Arc<Self>) -> Busy {
        self.state.store(BUSY, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// When the connection times out unless something happens first, and in which phase.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let state = self.state.load(Ordering::Relaxed);
        let since = self.opened + Duration::from_millis(state & !PHASE);
        match state & PHASE {
            HEAD => Some((since + limits.header_read_timeout, "header")),
            IDLE => Some((since + limits.idle_timeout, "idle")),
            _ => None,
        }
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .state
            .store(IDLE | activity.now(), Ordering::Relaxed);
    }
}

/// A client connection as hyper (and, once upgraded, the WebSocket) sees it: it reports reads
/// to the connection's [`Activity`] and holds its place under the listener's connection limit
/// until it is dropped.
struct Io<T> {
    inner: T,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl<T> Io<T> {
    fn new(inner: T, permit: OwnedSemaphorePermit) -> Io<T> {
        Io {
            inner,
            activity: Arc::new(Activity::new()),
            _permit: permit,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Io<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Io<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_follow_the_connection_phase() {
        let limits = limits();
        let activity = Arc::new(Activity::new());
        let opened = Instant::now();
        assert_eq!(
            activity.deadline(&limits),
            Some((opened + Duration::from_secs(10), "header"))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.read();
        assert_eq!(
            activity.deadline(&limits),
            Some((opened + Duration::from_secs(10), "header")),
            "bytes of a head do not extend its deadline"
        );
        let busy = activity.busy();
        assert_eq!(activity.deadline(&limits), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.read();
        assert_eq!(
            activity.deadline(&limits),
            None,
            "a request body is not a head"
        );
        drop(busy);
        let answered = Instant::now();
        assert_eq!(
            activity.deadline(&limits),
            Some((answered + Duration::from_secs(60), "idle"))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.read();
        assert_eq!(
            activity.deadline(&limits),
            Some((answered + Duration::from_secs(15), "header"))
        );
    }

    #[test]
    fn throttle_logs_the_first_then_counts() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.tick(), Some(1));
        assert_eq!(throttle.tick(), None);
        assert_eq!(throttle.tick(), None);
        throttle.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(throttle.tick(), Some(3));
    }

    #[test]
    fn refusal_is_a_complete_503() {
        let response = String::from_utf8(refusal_response()).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
        assert!(
            head.ends_with(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[tokio::test]
    async fn liveness_falls_when_the_accept_loop_ends_in_any_way() {
        let start = || async {
            let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let liveness = Liveness::started();
            let probe = liveness.probe();
            let listener = Listener {
                name: "test",
                socket,
                limits: limits(),
                tls: None,
                liveness,
            };
            let service = hyper::service::service_fn(|_: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Body::empty()))
            });
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve(listener, service, shutdown.clone()));
            (probe, task, shutdown)
        };
        let (probe, task, shutdown) = start().await;
        assert!(probe());
        shutdown.cancel();
        task.await.unwrap();
        assert!(!probe(), "ended at shutdown");

        let (probe, task, _shutdown) = start().await;
        assert!(probe());
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(!probe(), "aborted");
    }
}
