//! The writer half of a session: drains the socket's outbound queue into the socket, many
//! frames per flush when it has a backlog, and sends the close frame when the [`CloseSignal`]
//! fires. A socket whose oldest unwritten frame was queued more than `socket_max_lag` ago is a
//! slow consumer and is closed with 4100, whether its queue is full or not: the backlog of a
//! reader that has stopped sits mostly in the kernel's buffers, where no count sees it, and a
//! blocked write is how it shows.
//!
//! [`CloseSignal`]: dispatcher::CloseSignal

use std::time::Duration;

use dispatcher::{Outbound, Queued, SocketHandle, CLOSE_SLOW_CONSUMER};
use futures_util::{Sink, SinkExt};
use tokio::time::Instant;
use warp::ws::Message;

use super::code;

/// How long the close frame, and what is flushed before it, may take to write.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most frames written with one flush (one system call) when a socket has a backlog.
const WRITE_BATCH: usize = 64;

/// How a batch of writes ended.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    All,
    /// Its oldest frame was queued longer ago than the lag bound allows.
    Late,
    Failed,
}

pub(super) async fn write_loop<S>(
    mut sink: S,
    mut outbound: Outbound,
    handle: SocketHandle,
    max_lag: Duration,
) where
    S: Sink<Message> + Unpin,
{
    let closed = handle.close_signal().closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            biased;
            code = &mut closed => {
                // What was queued before the close (an error explaining it, say) goes first,
                // except to a slow consumer, whose queue is what it could not take.
                if code != CLOSE_SLOW_CONSUMER {
                    let deadline = Instant::now() + CLOSE_TIMEOUT;
                    while let Some(queued) = outbound.try_recv() {
                        let written = write_queued(&mut sink, &mut outbound, queued, deadline);
                        if written.await != Written::All {
                            break;
                        }
                    }
                }
                let close = sink.send(Message::close_with(code, close_reason(code)));
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                break;
            }
            queued = outbound.recv() => {
                let Some(queued) = queued else { break };
                let deadline = queued.at + max_lag;
                match write_queued(&mut sink, &mut outbound, queued, deadline).await {
                    Written::All => {}
                    Written::Late => handle.close_slow("oldest unwritten frame older than the lag bound"),
                    Written::Failed => {
                        handle.close_signal().close(code::NORMAL);
                        break;
                    }
                }
            }
        }
    }
}

/// Writes `first` and whatever else is already queued (up to [`WRITE_BATCH`]) with one flush,
/// by `deadline`: the lag bound of the oldest of them.
async fn write_queued<S>(
    sink: &mut S,
    outbound: &mut Outbound,
    first: Queued,
    deadline: Instant,
) -> Written
where
    S: Sink<Message> + Unpin,
{
    if deadline <= Instant::now() {
        return Written::Late;
    }
    let write = async {
        let mut written = 0;
        let mut next = Some(first);
        while let Some(queued) = next {
            sink.feed(Message::text(queued.frame.as_ref())).await?;
            written += 1;
            next = if written < WRITE_BATCH {
                outbound.try_recv()
            } else {
                None
            };
        }
        sink.flush().await
    };
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(())) => Written::All,
        Ok(Err(_)) => Written::Failed,
        Err(_) => Written::Late,
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        CLOSE_SLOW_CONSUMER => "Slow consumer: too many undelivered messages",
        code::UNAUTHORIZED => "Unauthorized",
        code::SHUTTING_DOWN => "Server shutting down",
        code::PONG_TIMEOUT => "Pong reply not received",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    const LAG: Duration = Duration::from_secs(5);

    /// A peer that has stopped reading: nothing can be written to it.
    struct Stalled;

    impl Sink<Message> for Stalled {
        type Error = Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Pending
        }

        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Infallible> {
            unreachable!("never ready")
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Pending
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Pending
        }
    }

    fn texts(written: &[Message]) -> Vec<&str> {
        written.iter().filter_map(|m| m.to_str().ok()).collect()
    }

    fn close_code(written: &[Message]) -> Option<u16> {
        written.last()?.close_frame().map(|(code, _)| code)
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_is_closed_with_4100_once_the_lag_bound_passes() {
        let (handle, outbound) = SocketHandle::new("1.1", 1024);
        let start = Instant::now();
        assert!(handle.send("a".into()));
        let writer = tokio::spawn(write_loop(Stalled, outbound, handle.clone(), LAG));
        assert_eq!(handle.close_signal().closed().await, CLOSE_SLOW_CONSUMER);
        assert_eq!(Instant::now() - start, LAG);
        // The close frame cannot be written either; the writer gives up on it and ends.
        writer.await.unwrap();
        assert_eq!(Instant::now() - start, LAG + CLOSE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_older_than_the_lag_bound_are_not_written_and_the_socket_gets_4100() {
        let (handle, outbound) = SocketHandle::new("1.1", 1024);
        assert!(handle.send("stale".into()));
        tokio::time::advance(LAG + Duration::from_millis(1)).await;
        assert!(handle.send("fresh".into()));
        let mut written = Vec::new();
        write_loop(&mut written, outbound, handle.clone(), LAG).await;
        assert!(texts(&written).is_empty(), "{written:?}");
        assert_eq!(close_code(&written), Some(CLOSE_SLOW_CONSUMER));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_keeps_up_gets_every_frame_then_the_close() {
        let (handle, outbound) = SocketHandle::new("1.1", 1024);
        // More than one batch is queued when the close comes: all of it goes first.
        for i in 0..100 {
            assert!(handle.send(i.to_string().into()));
        }
        handle.close_signal().close(code::SHUTTING_DOWN);
        let mut written = Vec::new();
        write_loop(&mut written, outbound, handle.clone(), LAG).await;
        let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(texts(&written), expected);
        assert_eq!(close_code(&written), Some(code::SHUTTING_DOWN));
    }

    #[tokio::test(start_paused = true)]
    async fn frames_written_within_the_bound_keep_the_socket_open() {
        let (handle, outbound) = SocketHandle::new("1.1", 1024);
        let mut written = Vec::new();
        let sender = async {
            for i in 0..3 {
                assert!(handle.send(i.to_string().into()));
                tokio::time::sleep(LAG - Duration::from_millis(1)).await;
            }
            assert!(!handle.close_signal().is_closed());
            handle.close_signal().close(code::NORMAL);
        };
        tokio::join!(
            write_loop(&mut written, outbound, handle.clone(), LAG),
            sender
        );
        assert_eq!(texts(&written), ["0", "1", "2"]);
        assert_eq!(close_code(&written), Some(code::NORMAL));
    }
}
