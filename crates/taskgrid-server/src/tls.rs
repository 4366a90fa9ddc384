//! TLS on the coordinator's one port: HTTPS for clients and gRPC over TLS
//! for workers, with rustls.
//!
//! [`TlsListener`] accepts TCP connections and hands axum only those that
//! completed a TLS handshake. The handshakes run beside the accept loop (a
//! slow or silent peer holds up nobody) and each has
//! [`HANDSHAKE_TIMEOUT`]. A peer that speaks plain HTTP (its first byte is
//! no TLS handshake record) gets a plain-text `400` saying that this
//! coordinator serves TLS only, with the header [`TLS_REQUIRED_HEADER`], so
//! that a client or worker given an `http://` URL can say what is wrong
//! instead of hanging or reporting a protocol error.
//!
//! With a worker CA ([`ServerTls::load`]'s `worker_ca`), clients may still
//! connect without a certificate (the HTTP API is guarded by its token),
//! but the worker gateway takes only connections whose client certificate
//! that CA signed: [`require_worker_certificate`].

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::IncomingStream;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a peer may take from connecting to a finished handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The header of the `400` a plain-HTTP peer gets from a TLS coordinator.
pub const TLS_REQUIRED_HEADER: &str = "x-taskgrid-tls";

/// A TLS setting that cannot be used; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the combination (e.g. a key that is not the
    /// certificate's).
    #[error("{0}")]
    Rustls(String),
}

/// The crypto provider everywhere in taskgrid: ring (rustls deprecates it
/// for want of post-quantum key exchange; aws-lc-rs, which has that, needs
/// cmake and a long C build on every machine that builds taskgrid).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (a chain, or CA certificates).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: shown.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: shown.clone(),
            what: format!("not a PEM certificate file ({e})"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: shown,
            what: "no certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: shown.clone(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: shown,
        what: format!("no private key in it ({e}; expected -----BEGIN PRIVATE KEY-----)"),
    })
}

/// A root store of the CA certificates in a PEM file.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// What the coordinator serves TLS with.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    workers_need_certificate: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("workers_need_certificate", &self.workers_need_certificate)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The coordinator's certificate chain and key (PEM files); with
    /// `worker_ca`, workers must present a client certificate it signed.
    /// ALPN offers HTTP/2 (gRPC) and HTTP/1.1.
    pub fn load(cert: &Path, key: &Path, worker_ca: Option<&Path>) -> Result<ServerTls, TlsError> {
        let chain = read_certificates(cert)?;
        let key = read_key(key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match worker_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(read_roots(ca)?),
                    provider(),
                )
                // Clients of the HTTP API have no certificate: the gateway
                // checks for one (`require_worker_certificate`).
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Rustls(format!("{} and {}: {e}", cert.display(), "its key")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            workers_need_certificate: worker_ca.is_some(),
        })
    }

    /// Whether the worker gateway takes only workers with a client
    /// certificate.
    pub fn workers_need_certificate(&self) -> bool {
        self.workers_need_certificate
    }
}

/// Who is at the other end of a TLS connection: its address and whether
/// it presented a client certificate the worker CA signed (rustls refuses
/// the handshake of one it did not sign).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// Whether it presented a verified client certificate.
    pub certified: bool,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

/// A TCP listener that yields connections after their TLS handshake.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, Peer)>>,
}

impl TlsListener {
    /// TLS with `tls` on `tcp`.
    pub fn new(tcp: TcpListener, tls: &ServerTls) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(tls.config.clone()),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        // Small messages must not wait for Nagle's algorithm.
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                        }
                        self.handshakes.spawn(handshake(self.acceptor.clone(), tcp, addr));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: the
                        // handshakes in flight go on; try again shortly.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.tcp.local_addr()?,
            certified: false,
        })
    }
}

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Option<(TlsStream<TcpStream>, Peer)> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        refuse_plain(tcp, addr).await;
        return None;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp).into_fallible()).await {
        Ok(Ok(stream)) => {
            let certified = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            Some((stream, Peer { addr, certified }))
        }
        Ok(Err((e, tcp))) => {
            // The alert saying why (an unknown CA…) is written: close so
            // that the peer reads it, not a reset.
            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
            close_gently(tcp).await;
            None
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "TLS handshake timed out");
            None
        }
    }
}

/// Ends our side of `tcp` and reads what the peer still sends, for up to a
/// second: closing a socket with unread data resets the connection, and a
/// reset can destroy what we wrote last before the peer reads it.
async fn close_gently(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Tells a plain-HTTP peer, in plain HTTP, that this port speaks TLS.
async fn refuse_plain(mut tcp: TcpStream, addr: SocketAddr) {
    tracing::debug!(peer = %addr, "plain-text connection to a TLS port: refused");
    // Read what the peer sent first (its request, or an HTTP/2 preface),
    // so that closing does not reset the connection before it reads ours.
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await;
    let body = "this taskgrid coordinator serves TLS only: use an https:// URL\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n{TLS_REQUIRED_HEADER}: required\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(response.as_bytes())).await;
    close_gently(tcp).await;
}

/// Middleware of the worker gateway when workers need a client
/// certificate: a connection without one gets `UNAUTHENTICATED`, saying
/// so.
pub async fn require_worker_certificate(
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if peer.certified {
        return next.run(req).await;
    }
    tracing::warn!(peer = %peer.addr, "a worker without a client certificate was refused");
    let status = tonic::Status::unauthenticated(
        "this coordinator takes only workers with a client certificate signed by its --worker-ca (give the worker --tls-cert and --tls-key)",
    );
    let (parts, ()) = status.into_http::<()>().into_parts();
    axum::response::Response::from_parts(parts, axum::body::Body::empty())
}
