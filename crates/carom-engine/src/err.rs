//! Engine errors, each mapped to a stable API error kind.

use carom_api::ErrorKind;

/// Why an engine operation failed. Messages are for people and never contain secrets, message
/// bodies or full onion addresses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The text is not an onion address.
    #[error("not a valid onion address: {0}")]
    InvalidAddress(#[from] carom_proto::AddressError),
    /// No such contact.
    #[error("no such contact")]
    NoSuchContact,
    /// No such message.
    #[error("no such message")]
    NoSuchMessage,
    /// No such group (or not one this profile holds).
    #[error("no such group")]
    NoSuchGroup,
    /// Adding ourselves, or a similar contradiction.
    #[error("{0}")]
    InvalidRequest(String),
    /// Not possible in the contact's current state.
    #[error("{0}")]
    InvalidState(String),
    /// The contact exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A message or field exceeds its limit.
    #[error("{0}")]
    TooLarge(String),
    /// Too many requests.
    #[error("{0}")]
    RateLimited(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] carom_store::Error),
    /// The engine is shutting down.
    #[error("the daemon is shutting down")]
    ShuttingDown,
    /// Something the user cannot act on went wrong inside the daemon (the OS refused a
    /// thread, stored data is unreadable).
    #[error("internal error: {0}")]
    Internal(String),
    /// A bug: an invariant of the engine did not hold. Made with [`EngineError::bug`], which
    /// logs it with where it happened.
    #[error("a bug in caromd: {0} (please report it, with the daemon's log)")]
    Bug(String),
}

impl EngineError {
    /// A broken invariant at the caller's location: logged at error level (with where, never
    /// with data), returned as [`EngineError::Bug`].
    #[track_caller]
    pub(crate) fn bug(what: &str) -> EngineError {
        let at = std::panic::Location::caller();
        tracing::error!(%at, "bug: {what}");
        EngineError::Bug(format!("{what} (at {at})"))
    }

    /// The API error kind for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::InvalidAddress(_) => ErrorKind::InvalidAddress,
            EngineError::NoSuchContact | EngineError::NoSuchMessage | EngineError::NoSuchGroup => {
                ErrorKind::NotFound
            }
            EngineError::InvalidRequest(_) => ErrorKind::InvalidParams,
            EngineError::InvalidState(_) => ErrorKind::InvalidState,
            EngineError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            EngineError::TooLarge(_) => ErrorKind::TooLarge,
            EngineError::RateLimited(_) => ErrorKind::RateLimited,
            EngineError::Store(e) => store_kind(e),
            EngineError::ShuttingDown => ErrorKind::ShuttingDown,
            EngineError::Internal(_) | EngineError::Bug(_) => ErrorKind::Internal,
        }
    }
}

/// The API kind of a store error.
pub fn store_kind(e: &carom_store::Error) -> ErrorKind {
    use carom_store::ErrorKind as K;
    match e.kind() {
        K::WrongPassphrase => ErrorKind::WrongPassphrase,
        K::PassphraseRequired => ErrorKind::PassphraseRequired,
        // A key file that unlocks but does not open the database means the two do not belong
        // together: to the user that is a damaged profile.
        K::Corrupt | K::WrongKey => ErrorKind::Corrupt,
        K::DiskFull => ErrorKind::DiskFull,
        K::NotFound => ErrorKind::NotFound,
        K::Conflict => ErrorKind::AlreadyExists,
        K::Invalid => ErrorKind::InvalidParams,
        K::Io | K::Busy | K::Unsupported => ErrorKind::Storage,
        _ => ErrorKind::Internal,
    }
}

/// Result type of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl From<EngineError> for carom_api::ErrorObject {
    fn from(e: EngineError) -> carom_api::ErrorObject {
        carom_api::ErrorObject::new(e.kind(), e.to_string())
    }
}
