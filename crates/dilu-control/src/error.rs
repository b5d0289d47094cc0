//! The control plane's errors, typed from the node up to the API: each says which HTTP status it is and,
//! when a field is at fault, which field, value and rule.

use dilu_api::FieldError;

use crate::backend::BackendError;
use crate::store::StoreError;

/// Why a control-plane operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// Bad input (400).
    #[error(transparent)]
    Invalid(FieldError),
    /// No such function (404).
    #[error("no function named '{0}'")]
    NotFound(String),
    /// The name is taken (409).
    #[error("name = {0}: a function with this name exists; update it with PUT /v1/functions/{0}")]
    Exists(String),
    /// The request does not fit what runs (409): a quota no device has room for.
    #[error("{0}")]
    Conflict(FieldError),
    /// The store failed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backend refused or failed (its own status).
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<FieldError> for ControlError {
    fn from(e: FieldError) -> Self {
        ControlError::Invalid(e)
    }
}

impl ControlError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::Invalid(_) => 400,
            ControlError::NotFound(_) => 404,
            ControlError::Exists(_) | ControlError::Conflict(_) => 409,
            ControlError::Store(_) => 500,
            ControlError::Backend(b) => match b {
                BackendError::Invalid(_) => 400,
                BackendError::NotFound(_) => 404,
                BackendError::Conflict(_) => 409,
                BackendError::Unavailable(_) => 503,
                BackendError::Failed { .. } => 500,
            },
        }
    }

    /// The field at fault, when there is one.
    pub fn field(&self) -> Option<&FieldError> {
        match self {
            ControlError::Invalid(f)
            | ControlError::Conflict(f)
            | ControlError::Backend(BackendError::Invalid(f))
            | ControlError::Backend(BackendError::Conflict(f)) => Some(f),
            _ => None,
        }
    }
}
