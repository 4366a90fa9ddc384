//! Why talking to the coordinator failed, in plain words.
//!
//! tonic reports a failed connection as "transport error" and keeps the
//! reason a few sources down (tonic → hyper-util's connector → the io
//! error). A person needs that reason said once, with what to check:
//! "connection refused (is `taskgrid server` running there?)", or which
//! host name does not resolve; and said again when it changes, not at
//! every try. An address that cannot work (no scheme, no host) is refused
//! before any try, and TLS set up wrong (plain text to a TLS coordinator or
//! the reverse, an untrusted certificate) ends the worker with a message
//! saying what to change.

use std::error::Error;
use std::io;
use std::time::Duration;

use super::{WorkerError, WorkerTls};

/// How long a TCP connect to the coordinator may take: a host that drops
/// the packets is said to time out after this, not after the system's
/// minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a reconnect that keeps failing the same way is said again
/// (each try is logged at debug level).
const SAY_AGAIN: Duration = Duration::from_secs(60);

/// Why `e` (from connecting, or from the stream) happened: the deepest
/// telling cause in its chain of sources, in words. `host` is the
/// coordinator's host name, for a name that does not resolve.
pub(super) fn of_error(e: &(dyn Error + 'static), host: &str) -> String {
    let chain = || sources(e);
    let root = chain().last().unwrap_or(e);
    // hyper-util's connector: `ConnectError("dns error", <resolver's io error>)`.
    if chain().any(|c| c.to_string() == "dns error") {
        return format!(
            "the host name {host:?} does not resolve ({})",
            without_os_code(&root.to_string())
        );
    }
    if let Some(io) = chain().find_map(|c| c.downcast_ref::<io::Error>()) {
        return of_io(io);
    }
    let text = without_os_code(&root.to_string());
    // h2's words for a peer that does not speak HTTP/2 (an HTTP/1 server
    // answering the preface with a 400, a TLS port).
    if text.contains("frame with invalid size") || text.contains("invalid preface") {
        return format!(
            "the server does not speak HTTP/2 ({text}; is it a taskgrid coordinator, at an http:// address?)"
        );
    }
    text
}

/// `e` and its sources, outermost first.
fn sources<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |e| (*e).source())
}

/// Why the coordinator ended the call with `s`.
pub(super) fn of_status(s: &tonic::Status, host: &str) -> String {
    if let Some(source) = s.source() {
        return of_error(source, host);
    }
    match s.code() {
        tonic::Code::Unimplemented => {
            "the server has no worker gateway (is it a taskgrid coordinator?)".into()
        }
        code if s.message().is_empty() => format!("the coordinator answered {code:?}"),
        code => format!("{} ({code:?})", s.message()),
    }
}

/// An io error's kind in words, with what to check where that helps.
fn of_io(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused (is `taskgrid server` running there?)".into(),
        K::TimedOut => {
            "the connection timed out (is the host up, and its port open to this machine?)".into()
        }
        K::HostUnreachable => "no route to the host".into(),
        K::NetworkUnreachable => "the network is unreachable".into(),
        K::ConnectionReset => "the connection was reset".into(),
        K::ConnectionAborted => "the connection was aborted".into(),
        K::BrokenPipe | K::UnexpectedEof => "the connection was closed".into(),
        K::AddrNotAvailable => "the address is not available on this machine".into(),
        _ => without_os_code(&e.to_string()),
    }
}

/// "Connection refused (os error 111)" without the code.
fn without_os_code(text: &str) -> String {
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text.to_owned(),
    }
}

/// The coordinator's endpoint: `server` must be an `http://` or
/// `https://` URL with a host; `https://` speaks TLS with `tls`.
pub(super) fn endpoint(
    server: &str,
    tls: &WorkerTls,
) -> Result<tonic::transport::Endpoint, WorkerError> {
    let bad = |why: &str| WorkerError::BadServer(server.to_owned(), why.to_owned());
    let endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .map_err(|e| bad(&e.to_string()))?;
    let uri = endpoint.uri();
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(bad(&format!(
                "unknown scheme {other:?}; use http://HOST:PORT or https://HOST:PORT"
            )));
        }
        None => return Err(bad("no scheme; write it as http://HOST:PORT")),
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host; write it as http://HOST:PORT"));
    }
    let endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT);
    if !https {
        return Ok(endpoint);
    }
    let mut config = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &tls.ca_pem {
        config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &tls.identity_pem {
        config = config.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    endpoint
        .tls_config(config)
        .map_err(|e| WorkerError::Tls(format!("TLS for {server}: {}", of_error(&e, ""))))
}

/// Whether `why` (a failure talking to `server`) is TLS set up wrong —
/// which no retry mends — and if so, what to do about it. A plain
/// `http://` worker whose coordinator's answer was no HTTP/2 asks it over
/// HTTP/1.1 whether it serves TLS only (a TLS coordinator says so in a
/// header to anyone who speaks plain HTTP to it).
pub(super) async fn tls_mismatch(server: &str, why: &str) -> Option<WorkerError> {
    if server.starts_with("https://") {
        if why.contains("InvalidContentType") || why.contains("corrupt message") {
            return Some(WorkerError::Tls(format!(
                "the coordinator at {server} does not serve TLS: use {}",
                server.replacen("https://", "http://", 1)
            )));
        }
        if why.contains("invalid peer certificate") {
            return Some(WorkerError::Tls(format!(
                "the certificate of the coordinator at {server} is not trusted ({why}){}",
                certificate_hint(why)
            )));
        }
        if why.contains("CertificateRequired")
            || why.contains("UnknownCA")
            || why.contains("BadCertificate")
        {
            return Some(WorkerError::Tls(format!(
                "the coordinator at {server} refused this worker's client certificate ({why}): give --tls-cert and --tls-key signed by its --worker-ca"
            )));
        }
        return None;
    }
    // A TLS coordinator answers the HTTP/2 preface in plain HTTP/1.1 and
    // closes: h2 calls that a bad frame or a closed connection, by timing.
    // Only where something answered is it worth asking.
    let answered =
        !(why.contains("refused") || why.contains("timed out") || why.contains("resolve"));
    if answered && serves_tls_only(server).await {
        return Some(WorkerError::Tls(format!(
            "the coordinator at {server} serves TLS only: use {}",
            server.replacen("http://", "https://", 1)
        )));
    }
    None
}

/// What to do about a coordinator's certificate refused for `why`.
pub(super) fn certificate_hint(why: &str) -> &'static str {
    if why.contains("UnknownIssuer") {
        ": give the worker --ca FILE with the CA that signed it"
    } else if why.contains("NotValidForName") {
        ": it does not name the host in the URL (use a name or address it lists)"
    } else if why.contains("CaUsedAsEndEntity") {
        ": it is a CA certificate; the coordinator needs one with CA:FALSE"
    } else {
        ""
    }
}

/// Asks `server` (`http://HOST:PORT`) over plain HTTP/1.1 whether it is a
/// TLS coordinator: its answer then carries the `x-taskgrid-tls` header.
async fn serves_tls_only(server: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(authority) = server
        .strip_prefix("http://")
        .map(|r| r.split('/').next().unwrap_or(r))
    else {
        return false;
    };
    let probe = async {
        let mut tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request =
            format!("GET /healthz HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while answer.len() < 4096 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        Some(String::from_utf8_lossy(&answer).to_ascii_lowercase())
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Some(answer)) => answer.contains("\r\nx-taskgrid-tls: required"),
        _ => false,
    }
}

/// What the reconnect loop said last: a reason that does not change is
/// said once a minute, not at every try.
#[derive(Default)]
pub(super) struct Said {
    last: String,
    at: Option<tokio::time::Instant>,
}

impl Said {
    /// Logs `why` and the delay before the next try: as a warning if it is
    /// new, `always`, or last said [`SAY_AGAIN`] ago; else at debug level.
    pub(super) fn say(&mut self, why: &str, always: bool, retry_in: Duration) {
        let now = tokio::time::Instant::now();
        let stale = self.at.is_none_or(|at| now - at >= SAY_AGAIN);
        if always || stale || self.last != why {
            tracing::warn!("{why}; retrying in {retry_in:?}");
            self.last = why.to_owned();
            self.at = Some(now);
        } else {
            tracing::debug!("{why}; retrying in {retry_in:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::transport::Endpoint;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    async fn connect_error(url: &str) -> String {
        let endpoint = Endpoint::from_shared(url.to_owned()).unwrap();
        let host = endpoint.uri().host().unwrap_or_default().to_owned();
        match tokio::time::timeout(LIMIT, endpoint.connect()).await {
            Ok(Ok(_)) => panic!("{url} connected"),
            Ok(Err(e)) => of_error(&e, &host),
            Err(_) => panic!("{url}: no answer within {LIMIT:?}"),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_says_so_and_what_to_check() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let why = connect_error(&format!("http://127.0.0.1:{port}")).await;
        assert_eq!(
            why,
            "connection refused (is `taskgrid server` running there?)"
        );
    }

    #[tokio::test]
    async fn a_host_name_that_does_not_resolve_is_named() {
        // `.invalid` never resolves (RFC 2606).
        let why = connect_error("http://taskgrid-runtime.invalid:7070").await;
        assert!(
            why.starts_with("the host name \"taskgrid-runtime.invalid\" does not resolve ("),
            "{why}"
        );
        assert!(!why.contains("os error"), "{why}");
    }

    #[test]
    fn statuses_say_their_message_or_what_the_server_is_not() {
        let s = tonic::Status::unimplemented("");
        assert!(of_status(&s, "h").contains("no worker gateway"));
        let s = tonic::Status::aborted("replaced by a new session of this worker");
        assert_eq!(
            of_status(&s, "h"),
            "replaced by a new session of this worker (Aborted)"
        );
        let io = io::Error::from(io::ErrorKind::ConnectionReset);
        let s = tonic::Status::from_error(Box::new(io));
        assert_eq!(of_status(&s, "h"), "the connection was reset");
    }

    #[test]
    fn addresses_that_cannot_work_are_refused_before_any_try() {
        let tls = WorkerTls::default();
        for (url, says) in [
            ("127.0.0.1:7070", "no scheme"),
            ("ftp://coordinator:7070", "unknown scheme"),
            ("http://:7070", "no host"),
        ] {
            let e = endpoint(url, &tls).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(url), "{url}: {e}");
        }
        assert!(endpoint("http://127.0.0.1:7070", &tls).is_ok());
        assert!(endpoint("https://coordinator:7070", &tls).is_ok());
    }

    #[test]
    fn os_codes_are_left_out() {
        assert_eq!(
            without_os_code("Connection refused (os error 111)"),
            "Connection refused"
        );
        assert_eq!(without_os_code("plain"), "plain");
    }
}
