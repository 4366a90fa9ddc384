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
    match e.url() {
        Some(url) => format!("{what} {}: {root}", url.origin().ascii_serialization()),
        None => format!("{what} the coordinator: {root}"),
    }
}
