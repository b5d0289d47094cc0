//! The controller's [`FunctionStore`] on Kubernetes: the `Function` objects are the functions. The store
//! holds what the controller's watch last read of them (spec, `metadata.generation`, and the profile kept
//! in the [`PROFILE`](crate::meta::PROFILE) annotation); a profile the reconciler stores is written back to
//! that annotation by a background task, so a controller that takes over never profiles again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use dilu_api::{FunctionSpec, Profile};
use dilu_control::store::{FunctionStore, StoreError, StoredFunction};
use dilu_core::sync::lock;
use tokio::sync::mpsc;

/// A profile to write to a function's annotation (`None` clears it).
pub type ProfileWrite = (String, Option<Profile>);

/// Functions as the API server holds them.
pub struct KubeStore {
    functions: Mutex<BTreeMap<String, StoredFunction>>,
    writes: mpsc::UnboundedSender<ProfileWrite>,
}

impl KubeStore {
    /// An empty store; profiles to write go to `writes`.
    pub fn new(writes: mpsc::UnboundedSender<ProfileWrite>) -> KubeStore {
        KubeStore {
            functions: Mutex::new(BTreeMap::new()),
            writes,
        }
    }

    /// Records a function as its object now reads (before the controller is told about it).
    pub fn observe(&self, spec: FunctionSpec, generation: u64, profile: Option<Profile>) {
        lock(&self.functions).insert(
            spec.name.clone(),
            StoredFunction {
                spec,
                profile,
                generation,
            },
        );
    }

    /// The function as last recorded.
    pub fn get(&self, name: &str) -> Option<StoredFunction> {
        lock(&self.functions).get(name).cloned()
    }

    /// Forgets a function whose object is gone.
    pub fn forget(&self, name: &str) {
        lock(&self.functions).remove(name);
    }
}

impl FunctionStore for KubeStore {
    fn functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        Ok(lock(&self.functions).values().cloned().collect())
    }

    fn insert(&self, spec: &FunctionSpec) -> Result<bool, StoreError> {
        // The object exists already (kubectl made it); the watch recorded it before the controller was told.
        let mut functions = lock(&self.functions);
        functions
            .entry(spec.name.clone())
            .or_insert_with(|| StoredFunction {
                spec: spec.clone(),
                profile: None,
                generation: 1,
            });
        Ok(true)
    }

    fn update(
        &self,
        spec: &FunctionSpec,
        profile: Option<&Profile>,
    ) -> Result<Option<u64>, StoreError> {
        let mut functions = lock(&self.functions);
        let Some(f) = functions.get_mut(&spec.name) else {
            return Ok(None);
        };
        f.spec = spec.clone();
        if f.profile.as_ref() != profile {
            f.profile = profile.cloned();
            let _ = self.writes.send((spec.name.clone(), profile.cloned()));
        }
        Ok(Some(f.generation))
    }

    fn set_profile(&self, name: &str, profile: Option<&Profile>) -> Result<(), StoreError> {
        if let Some(f) = lock(&self.functions).get_mut(name) {
            f.profile = profile.cloned();
        }
        self.writes
            .send((name.to_string(), profile.cloned()))
            .map_err(|_| StoreError("the profile writer has stopped".into()))
    }

    fn delete(&self, name: &str) -> Result<bool, StoreError> {
        Ok(lock(&self.functions).remove(name).is_some())
    }
}
