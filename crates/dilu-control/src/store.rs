//! Where the control plane keeps functions: specs, generations and profiles. `dilu up` keeps them in SQLite
//! (its `dilu-server` store); tests use [`MemoryStore`]. Instances are not stored: their backend reports them,
//! with the labels that say whose they are.

use std::collections::BTreeMap;
use std::sync::Mutex;

use dilu_api::{FunctionSpec, Profile};

/// A function as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFunction {
    /// The spec as deployed.
    pub spec: FunctionSpec,
    /// Its profile, once known.
    pub profile: Option<Profile>,
    /// Bumped on every update.
    pub generation: u64,
}

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// The functions' durable home. Calls are short (an embedded database); they run on the reconciler's task.
pub trait FunctionStore: Send + Sync {
    /// Every function, by name.
    fn functions(&self) -> Result<Vec<StoredFunction>, StoreError>;
    /// Inserts a new function at generation 1; `false` when the name is taken.
    fn insert(&self, spec: &FunctionSpec) -> Result<bool, StoreError>;
    /// Replaces a function's spec and profile and bumps its generation; the new generation, or `None` when
    /// there is no such function.
    fn update(
        &self,
        spec: &FunctionSpec,
        profile: Option<&Profile>,
    ) -> Result<Option<u64>, StoreError>;
    /// Stores a function's profile.
    fn set_profile(&self, name: &str, profile: Option<&Profile>) -> Result<(), StoreError>;
    /// Deletes a function; `false` when there was none.
    fn delete(&self, name: &str) -> Result<bool, StoreError>;
}

/// A store in memory.
#[derive(Default)]
pub struct MemoryStore {
    functions: Mutex<BTreeMap<String, StoredFunction>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, StoredFunction>) -> T) -> T {
        f(&mut dilu_core::sync::lock(&self.functions))
    }
}

impl FunctionStore for MemoryStore {
    fn functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        Ok(self.with(|m| m.values().cloned().collect()))
    }

    fn insert(&self, spec: &FunctionSpec) -> Result<bool, StoreError> {
        Ok(self.with(|m| {
            if m.contains_key(&spec.name) {
                return false;
            }
            m.insert(
                spec.name.clone(),
                StoredFunction {
                    spec: spec.clone(),
                    profile: None,
                    generation: 1,
                },
            );
            true
        }))
    }

    fn update(
        &self,
        spec: &FunctionSpec,
        profile: Option<&Profile>,
    ) -> Result<Option<u64>, StoreError> {
        Ok(self.with(|m| {
            m.get_mut(&spec.name).map(|f| {
                f.spec = spec.clone();
                f.profile = profile.cloned();
                f.generation += 1;
                f.generation
            })
        }))
    }

    fn set_profile(&self, name: &str, profile: Option<&Profile>) -> Result<(), StoreError> {
        self.with(|m| {
            if let Some(f) = m.get_mut(name) {
                f.profile = profile.cloned();
            }
        });
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.with(|m| m.remove(name).is_some()))
    }
}
