//! Attached channels: quota channels for processes the agent does not start. In Kubernetes the kubelet starts
//! the instances (pods); the agent only creates one channel per pod, at `<channel root>/<device UUID>/<pod UID>`,
//! and its token manager divides each device among those channels exactly as among its own instances.
//!
//! Attached channels are not written to the agent's state file: the API server is the source of truth, and
//! after a restart the caller attaches every pod again, which re-opens the existing files with their counters
//! and last budgets. Nothing the agent does on shutdown or at start removes them, so a pod keeps its last
//! budget while no agent runs.
//!
//! The pod's process may run as any uid, so an attached channel file is `0666` in a `0755` directory: any
//! process that can reach the directory (every pod on the device, through the device plugin's mount) can open
//! a neighbour's channel. `docs/kubernetes.md` documents that trade-off and its upgrade path.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use dilu_api::agent::{Budgeting, Counters, Device};
use dilu_api::{InstanceKind, Quota};
use dilu_core::FieldError;
use dilu_core::sync::lock;
use dilu_quota::{AgentChannel, QuotaError, monotonic_ns};
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentError, OVERCOMMIT_SLACK, counters};
use crate::tokens::TokenManager;

/// Permissions of an attached channel file: readable and writable by the pod's process, whatever its uid.
pub const ATTACHED_CHANNEL_MODE: u32 = 0o666;
/// Permissions of the directory the agent creates for attached channels.
pub const ATTACHED_DIR_MODE: u32 = 0o755;

/// An attached channel as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachedStatus {
    /// The caller's id (the pod UID in Kubernetes).
    pub id: String,
    /// UUID of the budgeted device.
    pub device: String,
    /// What the process does.
    pub kind: InstanceKind,
    /// Its quota.
    pub quota: Quota,
    /// The channel file on this node.
    pub channel: PathBuf,
    /// Whether the last attach found a usable channel file and re-opened it (counters and last budget kept)
    /// rather than creating it.
    pub reopened: bool,
    /// Whether the requests on the device add up to more than the device: attach never refuses (the cluster
    /// admitted the pod), so over-commit is reported here and on stderr.
    pub overcommitted: bool,
    /// Budgeting state.
    pub budgeting: Option<Budgeting>,
    /// The channel's counters.
    pub counters: Option<Counters>,
}

/// What the agent keeps of an attached channel (in memory only).
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub(crate) device: String,
    pub(crate) kind: InstanceKind,
    pub(crate) quota: Quota,
    pub(crate) channel: PathBuf,
    pub(crate) reopened: bool,
}

/// The token manager's id of attached channel `id`. Instance ids never contain `/`, so the two never collide.
pub(crate) fn token_id(id: &str) -> String {
    format!("attached/{id}")
}

fn validate_id(id: &str) -> Result<(), FieldError> {
    FieldError::require(
        !id.is_empty() && id.len() <= 253 && !id.chars().any(char::is_control),
        "id",
        id,
        "must be 1-253 characters without control characters",
    )
}

impl Agent {
    /// Budgets a channel for a process the agent does not start (a Kubernetes pod). Creates the channel at
    /// `channel` (parent directories created) with the quota's initial budget — or, when a usable channel file
    /// of the same device is already there (the agent restarted), re-opens it keeping its counters and last
    /// budget. Idempotent: calling it again for the same id with another quota updates the quota (budgets
    /// written at once, like [`Agent::update_quota`]); with another device or channel path the channel moves.
    ///
    /// Never refuses for over-commit: the cluster already admitted the pod; an over-committed device is noted
    /// on stderr and in [`AttachedStatus::overcommitted`].
    ///
    /// The file is created `0666` and a directory the agent creates for it `0755` (see the module
    /// documentation: any pod on the device can open a neighbour's channel). The agent's own run directory is
    /// never opened up.
    ///
    /// Errors: [`AgentError::Invalid`] on `id`, `device` (not a device of this node), `quota` (as
    /// [`Agent::update_quota`] validates it) or `channel` (not an absolute file path);
    /// [`AgentError::Internal`] when the file cannot be created.
    pub fn attach(
        &self,
        id: &str,
        device: &str,
        kind: InstanceKind,
        quota: Quota,
        channel: &Path,
    ) -> Result<AttachedStatus, AgentError> {
        validate_id(id)?;
        quota.validate("quota")?;
        let device = self
            .device(device)
            .ok_or_else(|| {
                FieldError::new(
                    "device",
                    device,
                    "no such device on this node; see GET /devices",
                )
            })?
            .clone();
        if !channel.is_absolute() || channel.file_name().is_none() {
            return Err(FieldError::new(
                "channel",
                channel.display().to_string(),
                "must be an absolute file path",
            )
            .into());
        }
        let key = token_id(id);
        let mut attached = lock(&self.attached);
        if let Some(existing) = attached.get_mut(id) {
            if existing.device == device.uuid
                && existing.channel == channel
                && existing.kind == kind
            {
                let mut tokens = lock(&self.tokens);
                self.note_overcommit(&tokens, id, &device.uuid, quota.request, Some(&key));
                tokens.set_quota(&key, quota, monotonic_ns());
                existing.quota = quota;
                let record = existing.clone();
                return Ok(view(id, &record, &tokens));
            }
            // Moved to another device or path (or another kind): budget it afresh.
            let old = existing.clone();
            attached.remove(id);
            lock(&self.tokens).remove(&key);
            if old.channel != channel {
                remove_channel(&old.channel);
            }
        }
        let mut tokens = lock(&self.tokens);
        self.note_overcommit(&tokens, id, &device.uuid, quota.request, None);
        let (handle, reopened) = self.attached_channel(&tokens, &device, &quota, channel)?;
        tokens
            .add(&device.uuid, &key, kind, quota, handle)
            .map_err(|e| AgentError::Internal {
                context: format!("budgeting attached channel {id}"),
                reason: e.to_string(),
            })?;
        let record = Attached {
            device: device.uuid.clone(),
            kind,
            quota,
            channel: channel.to_path_buf(),
            reopened,
        };
        let status = view(id, &record, &tokens);
        attached.insert(id.to_string(), record);
        Ok(status)
    }

    /// Stops budgeting `id` and removes its channel file. [`AgentError::NotFound`] if unknown.
    pub fn detach(&self, id: &str) -> Result<(), AgentError> {
        let record = lock(&self.attached)
            .remove(id)
            .ok_or_else(|| AgentError::NotFound(id.to_string()))?;
        lock(&self.tokens).remove(&token_id(id));
        remove_channel(&record.channel);
        Ok(())
    }

    /// Every attached channel: id, device, kind, quota, channel path, budgeting, counters.
    pub fn attached(&self) -> Vec<AttachedStatus> {
        let attached = lock(&self.attached);
        let tokens = lock(&self.tokens);
        attached
            .iter()
            .map(|(id, record)| view(id, record, &tokens))
            .collect()
    }

    fn note_overcommit(
        &self,
        tokens: &TokenManager,
        id: &str,
        device: &str,
        request: f64,
        except: Option<&str>,
    ) {
        let total = tokens.requested(device, except) + request;
        if total > 1.0 + OVERCOMMIT_SLACK {
            eprintln!(
                "dilu agent: attached {id}: the requests on {device} total {total:.3} of the device \
                 (over-committed); budgeted anyway, the cluster admitted it"
            );
        }
    }

    /// Re-opens a usable channel of `device` at `path`, or creates one; says which.
    fn attached_channel(
        &self,
        tokens: &TokenManager,
        device: &Device,
        quota: &Quota,
        path: &Path,
    ) -> Result<(AgentChannel, bool), AgentError> {
        if path.exists() {
            match AgentChannel::open(path).and_then(|c| usable(c, device, self.config().window_ns))
            {
                Ok(channel) => {
                    set_mode(path, ATTACHED_CHANNEL_MODE);
                    return Ok((channel, true));
                }
                Err(error) => eprintln!(
                    "dilu agent: attached channel {}: unusable ({error}); recreating it",
                    path.display()
                ),
            }
        }
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            std::fs::create_dir_all(parent).map_err(|e| AgentError::Internal {
                context: format!("creating {}", parent.display()),
                reason: e.to_string(),
            })?;
            if parent != self.config().run_dir() {
                set_mode(parent, ATTACHED_DIR_MODE);
            }
        }
        let spec = self.channel_spec(tokens, device, quota);
        let channel = AgentChannel::create(path, &spec, ATTACHED_CHANNEL_MODE).map_err(|e| {
            AgentError::Internal {
                context: format!("creating quota channel {}", path.display()),
                reason: e.to_string(),
            }
        })?;
        Ok((channel, false))
    }
}

/// Keeps a re-opened channel if it budgets `device`; puts the agent's window in it if it differs.
fn usable(
    channel: AgentChannel,
    device: &Device,
    window_ns: u64,
) -> Result<AgentChannel, QuotaError> {
    let snapshot = channel.snapshot();
    if snapshot.device_uuid != device.uuid || snapshot.device_kind != Some(device.kind) {
        return Err(QuotaError::InvalidParameter {
            field: "device_uuid",
            value: snapshot.device_uuid,
            rule: "the channel budgets another device",
        });
    }
    if snapshot.window_ns != window_ns {
        channel.set_window_ns(window_ns)?;
    }
    Ok(channel)
}

fn view(id: &str, record: &Attached, tokens: &TokenManager) -> AttachedStatus {
    let key = token_id(id);
    AttachedStatus {
        id: id.to_string(),
        device: record.device.clone(),
        kind: record.kind,
        quota: record.quota,
        channel: record.channel.clone(),
        reopened: record.reopened,
        overcommitted: tokens.requested(&record.device, None) > 1.0 + OVERCOMMIT_SLACK,
        budgeting: tokens.resident(&key),
        counters: tokens.snapshot(&key).as_ref().map(counters),
    }
}

fn set_mode(path: &Path, mode: u32) {
    if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        eprintln!(
            "dilu agent: setting mode {mode:o} on {}: {error}",
            path.display()
        );
    }
}

fn remove_channel(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("dilu agent: removing {}: {error}", path.display());
    }
}
