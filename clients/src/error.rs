//! Client errors.

/// What a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The server answered with an error status; `message` starts with its stable code.
    #[error("{message}")]
    Server { code: tonic::Code, message: String },
    /// A produce request failed for one of its records.
    #[error("produce failed: {code}: {message}")]
    Produce { code: String, message: String },
    #[error("the producer has stopped")]
    Closed,
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl ClientError {
    /// Worth retrying: the server could not serve now.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => {
                matches!(code, tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown)
            }
            ClientError::Produce { code, .. } => code == "unavailable",
            _ => false,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Server { code: s.code(), message: s.message().to_string() }
    }
}
