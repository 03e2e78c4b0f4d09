//! TLS on the gateway and the admin listener, with a test CA made here: `wss://` and an
//! HTTPS trigger, `https://` `/ready`, and a certificate swapped on disk while running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use switchboard::config::TlsSection;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::{self, TestServer, APP_ID, KEY};

/// A certificate authority and the server certificates it signs (for `localhost` and
/// 127.0.0.1), written to a directory of their own.
struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    dir: PathBuf,
}

/// One server certificate as PEM, and its DER to compare with what a handshake shows.
struct ServerCert {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Switchboard test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        let dir =
            std::env::temp_dir().join(format!("switchboard-tls-it-{}", common::random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki {
            ca: rcgen::Issuer::new(params, key),
            ca_pem,
            dir,
        }
    }

    fn issue(&self) -> ServerCert {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        ServerCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `cert` as `<name>.crt` / `<name>.key` (each replaced whole, by rename).
    fn install(&self, name: &str, cert: &ServerCert) -> TlsSection {
        let section = TlsSection {
            cert_path: self.path(&format!("{name}.crt")),
            key_path: self.path(&format!("{name}.key")),
            reload_interval_secs: 1,
        };
        replace(&section.cert_path, &cert.cert);
        replace(&section.key_path, &cert.key);
        section
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    fn https(&self, server: &TestServer) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .resolve("localhost", server.http)
            .build()
            .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn replace(path: &Path, contents: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A TLS connection to `addr` as `localhost`, checked against the test CA.
async fn handshake(pki: &Pki, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake within 10 s")
        .expect("the server's certificate is trusted")
}

fn served_certificate(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

async fn next_frame(socket: &mut Wss) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(text) = frame {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            if frame["event"] != "pusher:ping" {
                return frame;
            }
        }
    }
}

async fn connect_wss(pki: &Pki, server: &TestServer) -> Wss {
    let stream = handshake(pki, server.http).await;
    let url = format!(
        "wss://localhost:{}/app/{KEY}?protocol=7",
        server.http.port()
    );
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(
        next_frame(&mut socket).await["event"],
        "pusher:connection_established"
    );
    socket
}

async fn subscribe(socket: &mut Wss, channel: &str) {
    let frame = json!({"event":"pusher:subscribe","data":{"channel":channel}});
    socket.send(Message::text(frame.to_string())).await.unwrap();
    let reply = next_frame(socket).await;
    assert_eq!(
        reply["event"], "pusher_internal:subscription_succeeded",
        "{reply}"
    );
}

async fn https_trigger(pki: &Pki, server: &TestServer, channel: &str, data: &str) -> u16 {
    let path = format!("/apps/{APP_ID}/events");
    let body = json!({"name":"ev","channel":channel,"data":data}).to_string();
    let query = common::signed_query("POST", &path, &body, common::SECRET, common::now());
    pki.https(server)
        .post(format!(
            "https://localhost:{}{path}?{query}",
            server.http.port()
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn wss_and_https_on_the_gateway_and_the_admin_listener() {
    let pki = Pki::new();
    let cert = pki.issue();
    let gateway_tls = pki.install("gateway", &cert);
    let admin_tls = pki.install("admin", &cert);
    let server = TestServer::start_with(|c| {
        c.gateway.tls = Some(gateway_tls);
        c.admin.tls = Some(admin_tls);
    })
    .await;

    let mut socket = connect_wss(&pki, &server).await;
    subscribe(&mut socket, "secure").await;
    assert_eq!(
        https_trigger(&pki, &server, "secure", "over tls").await,
        200
    );
    let event = next_frame(&mut socket).await;
    assert_eq!(
        (event["channel"].as_str(), event["data"].as_str()),
        (Some("secure"), Some("over tls"))
    );

    let admin = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .resolve("localhost", server.admin)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = admin
            .get(format!("https://localhost:{}/ready", server.admin.port()))
            .send()
            .await
            .unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "admin not ready over https");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let about: Value = pki
        .https(&server)
        .get(format!("https://localhost:{}/", server.http.port()))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(about["websocket"], "wss://<this host>/app/{key}?protocol=7");
    assert_eq!(about["admin"]["url"], format!("https://{}", server.admin));

    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::get(server.url("/")).await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(server.wait_count("SELECT count(*) FROM events", 1).await, 1);
    server.cleanup().await;
}

#[tokio::test]
async fn a_new_certificate_on_disk_is_served_without_a_restart() {
    let pki = Pki::new();
    let (first, second) = (pki.issue(), pki.issue());
    let section = pki.install("gateway", &first);
    let server = TestServer::start_with(|c| c.gateway.tls = Some(section.clone())).await;
    let mut before = connect_wss(&pki, &server).await;
    subscribe(&mut before, "reloaded").await;
    assert_eq!(
        served_certificate(&handshake(&pki, server.http).await),
        first.der
    );

    // A broken file (a key that does not fit) is not taken: the first certificate stays.
    replace(&section.cert_path, &second.cert);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        served_certificate(&handshake(&pki, server.http).await),
        first.der
    );

    replace(&section.key_path, &second.key);
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_certificate(&handshake(&pki, server.http).await) != second.der {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"switchboard_tls_reloads_total{listener="gateway",result="error"} 1"#)
            && metrics
                .contains(r#"switchboard_tls_reloads_total{listener="gateway",result="ok"} 1"#),
        "{metrics}"
    );

    // The connection made before the swap still works, and so does a new one.
    let mut after = connect_wss(&pki, &server).await;
    subscribe(&mut after, "reloaded").await;
    assert_eq!(https_trigger(&pki, &server, "reloaded", "both").await, 200);
    for socket in [&mut before, &mut after] {
        assert_eq!(next_frame(socket).await["data"], "both");
    }
    server.cleanup().await;
}
