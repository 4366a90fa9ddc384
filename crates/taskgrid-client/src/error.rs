//! [`ClientError`]: what a call to the coordinator can end in.

/// A failed API call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The coordinator answered with an error: its HTTP status and the
    /// `code`/`message` of its `{"error": …}` body.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable error code, e.g. `not_found`, `queue_full`.
        code: String,
        /// The server's message.
        message: String,
        /// The request field at fault, when the server named one.
        field: Option<String>,
    },
    /// The request did not get an answer (connection refused, reset…).
    /// Its message says once what failed and why, without repeating the
    /// HTTP library's chain of causes.
    #[error("{}", transport_message(.0))]
    Transport(reqwest::Error),
    /// The answer could not be understood.
    #[error("cannot decode the coordinator's answer: {0}")]
    Decode(String),
    /// The base URL given to [`crate::Client::new`] is not a URL.
    #[error("invalid base url {0:?}")]
    InvalidUrl(String),
    /// A CA certificate given to [`crate::Client::with_ca_pem`] cannot be
    /// used.
    #[error("{0}")]
    Tls(String),
}

impl ClientError {
    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of an [`ClientError::Api`] error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// "cannot connect to http://127.0.0.1:7070/: Connection refused (os error
/// 111)": what failed, where, and the innermost cause.
fn transport_message(e: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let what = if e.is_timeout() {
        "timed out talking to"
    } else if e.is_connect() {
        "cannot connect to"
    } else {
        "no answer from"
    };
    let text = root.to_string();
    // rustls's words, said as what to change.
    let hint = if text.contains("InvalidContentType") || text.contains("corrupt message") {
        " (the coordinator does not serve TLS there: use an http:// URL)"
    } else if text.contains("UnknownIssuer") {
        " (its certificate is not signed by a CA this client trusts: give --ca FILE with the CA that signed it)"
    } else if text.contains("NotValidForName") {
        " (its certificate does not name the host in the URL: use a name or address it lists)"
    } else if text.contains("CaUsedAsEndEntity") {
        " (its certificate is a CA certificate; the coordinator needs one with CA:FALSE)"
    } else {
        ""
    };
    match e.url() {
        Some(url) => format!(
            "{what} {}: {root}{hint}",
            url.origin().ascii_serialization()
        ),
        None => format!("{what} the coordinator: {root}{hint}"),
    }
}
