use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::*;

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

/// A connection through the proxy that has already carried one byte both ways.
async fn open(proxy: &Proxy) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).await.unwrap();
    stream
}

/// True when the stream ends (EOF or reset) within a second.
async fn ends(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        timeout(Duration::from_secs(1), stream.read_to_end(&mut rest)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn forwards_until_cut_and_again_after_restore() {
    let proxy = Proxy::start(echo_server().await).await.unwrap();
    assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");

    let mut stream = open(&proxy).await;
    proxy.cut();
    assert!(proxy.is_cut());
    assert!(
        ends(&mut stream).await,
        "a forwarded connection ends when cut"
    );
    assert!(round_trip(proxy.addr()).await.is_err(), "refused while cut");

    proxy.restore();
    assert!(!proxy.is_cut());
    assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");
}

#[tokio::test]
async fn held_replies_reach_nobody_until_restored() {
    let proxy = Proxy::start(echo_server().await).await.unwrap();
    let mut stream = open(&proxy).await;
    proxy.hold_replies();
    stream.write_all(b"y").await.unwrap();
    let mut one = [0u8; 1];
    assert!(
        timeout(Duration::from_millis(300), stream.read_exact(&mut one))
            .await
            .is_err(),
        "the echo is held back"
    );
    proxy.restore();
    assert!(ends(&mut stream).await, "restore drops held connections");
    assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");
}

#[tokio::test]
async fn silent_accepts_and_never_answers() {
    let proxy = Proxy::start(echo_server().await).await.unwrap();
    let mut stream = open(&proxy).await;
    proxy.silence();
    assert!(ends(&mut stream).await, "silence drops open connections");

    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    fresh.write_all(b"ping").await.unwrap();
    let mut reply = [0u8; 4];
    assert!(
        timeout(Duration::from_millis(300), fresh.read_exact(&mut reply))
            .await
            .is_err(),
        "accepted, never answered"
    );
    proxy.restore();
    assert!(ends(&mut fresh).await);
    assert_eq!(round_trip(proxy.addr()).await.unwrap(), b"ping");
}
