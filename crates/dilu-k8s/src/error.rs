//! Why Kubernetes-side work failed.

/// A Dilu annotation or label that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetaError {
    /// An annotation's value breaks its format.
    #[error("{object}: annotation {key}: {reason}")]
    Annotation {
        /// The object (`node n1`, `pod default/ocr-3`).
        object: String,
        /// The annotation key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
