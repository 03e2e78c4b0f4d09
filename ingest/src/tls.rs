//! Optional TLS for a listener (rustls with the ring provider): a PEM certificate chain and key
//! read from files, re-read while the process runs. A reload that finds the files changed and
//! valid swaps the certificate for every later handshake; one that finds them broken keeps the
//! previous certificate and logs the error once per distinct content.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Where a listener's certificate and key are, and how often they are checked for changes.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM: the server certificate first, then its intermediates.
    pub cert_path: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    pub reload_interval: Duration,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the key in {key_path} does not fit the certificate in {cert_path}")]
    Key {
        cert_path: PathBuf,
        key_path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no TLS configuration could be built")]
    Config(#[source] rustls::Error),
}

/// A listener's TLS: the acceptor for new connections and the reloadable certificate.
pub struct Tls {
    acceptor: TlsAcceptor,
    certificate: Arc<Reloading>,
}

impl Tls {
    /// Reads and checks the files now: a listener never starts with a certificate it cannot use.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let contents = Contents::read(&files)?;
        let key = contents.certified_key(&files, &provider)?;
        let certificate = Arc::new(Reloading {
            files,
            provider: provider.clone(),
            current: RwLock::new(Arc::new(key)),
            last_seen: Mutex::new(contents),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        // WebSockets upgrade HTTP/1.1 connections; HTTP/2 is not served.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the files; returns whether a new certificate is now served.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.certificate.reload()
    }

    /// Checks the files every `reload_interval` until `shutdown`; `listener` names it in logs and
    /// in `switchboard_tls_reloads_total{listener, result}`.
    pub async fn watch(self: Arc<Self>, listener: &'static str, shutdown: CancellationToken) {
        let files = &self.certificate.files;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(files.reload_interval) => {}
            }
            match self.reload() {
                Ok(false) => {}
                Ok(true) => {
                    metrics::counter!("switchboard_tls_reloads_total", "listener" => listener, "result" => "ok").increment(1);
                    tracing::info!(listener, cert = %files.cert_path.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    metrics::counter!("switchboard_tls_reloads_total", "listener" => listener, "result" => "error").increment(1);
                    tracing::error!(listener, error = %crate::error::Chain(&error), "TLS files changed but cannot be used; the previous certificate is kept");
                }
            }
        }
    }
}

/// The certificate every handshake gets: the last valid one read from the files.
struct Reloading {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// What the files held at the last check, valid or not: an unchanged file is not parsed
    /// (nor reported) again.
    last_seen: Mutex<Contents>,
}

impl Reloading {
    fn reload(&self) -> Result<bool, TlsError> {
        let contents = Contents::read(&self.files)?;
        let mut last_seen = self.last_seen.lock();
        if *last_seen == contents {
            return Ok(false);
        }
        let parsed = contents.certified_key(&self.files, &self.provider);
        *last_seen = contents;
        *self.current.write() = Arc::new(parsed?);
        Ok(true)
    }
}

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Contents {
            cert: read(&files.cert_path)?,
            key: read(&files.key_path)?,
        })
    }

    fn certified_key(
        &self,
        files: &TlsFiles,
        provider: &CryptoProvider,
    ) -> Result<CertifiedKey, TlsError> {
        let pem = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Pem { path, source }
        };
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem(&files.cert_path))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: files.cert_path.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(pem(&files.key_path))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Key {
            cert_path: files.cert_path.clone(),
            key_path: files.key_path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
        der: Vec<u8>,
    }

    fn self_signed(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert_path: dir.join("cert.pem"),
            key_path: dir.join("key.pem"),
            reload_interval: Duration::from_secs(1),
        }
    }

    fn write(files: &TlsFiles, cert: &str, key: &str) {
        std::fs::write(&files.cert_path, cert).unwrap();
        std::fs::write(&files.key_path, key).unwrap();
    }

    fn served(tls: &Tls) -> Vec<u8> {
        tls.certificate.current.read().cert[0].to_vec()
    }

    fn temp_dir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchboard-tls-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reload_swaps_valid_files_and_keeps_the_old_certificate_on_broken_ones() {
        let dir = temp_dir();
        let files = files(&dir);
        let (a, b) = (self_signed("a.test"), self_signed("b.test"));
        write(&files, &a.cert, &a.key);
        let tls = Tls::load(files.clone()).unwrap();
        assert_eq!(served(&tls), a.der);
        assert!(!tls.reload().unwrap(), "unchanged files are not reloaded");

        // A certificate with another certificate's key, a truncated file, no certificate at all:
        // each is reported and the served certificate stays.
        write(&files, &b.cert, &a.key);
        assert!(matches!(tls.reload(), Err(TlsError::Key { .. })));
        write(&files, "", &a.key);
        assert!(matches!(tls.reload(), Err(TlsError::NoCertificate { .. })));
        write(&files, &a.cert[..a.cert.len() / 2], &a.key);
        assert!(tls.reload().is_err());
        assert_eq!(served(&tls), a.der);
        assert!(!tls.reload().unwrap(), "a broken file is reported once");

        write(&files, &b.cert, &b.key);
        assert!(tls.reload().unwrap());
        assert_eq!(served(&tls), b.der);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn load_fails_on_missing_or_mismatched_files() {
        let dir = temp_dir();
        let files = files(&dir);
        assert!(matches!(
            Tls::load(files.clone()),
            Err(TlsError::Read { .. })
        ));
        let (a, b) = (self_signed("a.test"), self_signed("b.test"));
        write(&files, &a.cert, &b.key);
        let error = Tls::load(files).err().unwrap();
        assert!(error.to_string().contains("does not fit"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
