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
    #[error("transport: {0}")]
    Transport(#[source] reqwest::Error),
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
