//! Leader election for the controller and dilu-scheduler: every replica runs, one holds a
//! `coordination.k8s.io/v1` Lease (through `kube-lease-manager`) and works; the others wait to take over.
//! A leader that loses its lease stops working at once and the process exits, so that two replicas never
//! act together (Kubernetes restarts it as a standby).

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};

/// How a replica takes part in the election.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name (`dilu-controller`, `dilu-scheduler`).
    pub lease: String,
    /// This replica's identity (unique among replicas: the pod name).
    pub identity: String,
    /// Seconds the lease stays valid after its last renewal: how long a dead leader blocks the others.
    pub duration_s: u64,
    /// Seconds before expiry at which the leader renews.
    pub grace_s: u64,
}

impl Election {
    /// `lease` in `namespace` for `identity`, valid 15 s, renewed 5 s before it expires.
    pub fn new(namespace: &str, lease: &str, identity: &str) -> Election {
        Election {
            namespace: namespace.to_string(),
            lease: lease.to_string(),
            identity: identity.to_string(),
            duration_s: 15,
            grace_s: 5,
        }
    }
}

/// Why leading ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The lease could not be managed.
    #[error("lease {lease}: {source}")]
    Lease {
        /// The Lease's name.
        lease: String,
        /// Why.
        source: LeaseManagerError,
    },
    /// The lease went to another replica while this one led.
    #[error("lease {0}: lost to another replica; stopping")]
    Lost(String),
}

/// Waits until this replica holds the lease, then runs `work(stop)`, where `stop` completes when the lease is
/// lost; returns when `work` returns, or when `shutdown` completes (the lease is then released so a standby
/// takes over at once). Losing the lease is an error: the caller exits.
pub async fn lead<W, F, S>(
    client: Client,
    election: &Election,
    shutdown: S,
    work: W,
) -> Result<(), LeaderError>
where
    W: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
    F: Future<Output = ()>,
    S: Future<Output = ()>,
{
    let error = |source| LeaderError::Lease {
        lease: election.lease.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(election.duration_s)
        .with_grace(election.grace_s)
        .build()
        .await
        .map_err(error)?;
    let (mut leading, task) = manager.watch().await;
    tokio::pin!(shutdown);
    eprintln!(
        "dilu: {}: waiting for lease {}/{}",
        election.identity, election.namespace, election.lease
    );
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = &mut shutdown => {
                drop(leading);
                let _ = task.await;
                return Ok(());
            }
            changed = leading.changed() => {
                if changed.is_err() {
                    return Err(LeaderError::Lost(election.lease.clone()));
                }
            }
        }
    }
    eprintln!(
        "dilu: {}: leading (lease {}/{})",
        election.identity, election.namespace, election.lease
    );
    let mut watch = leading.clone();
    let lost = Box::pin(async move {
        loop {
            if watch.changed().await.is_err() || !*watch.borrow_and_update() {
                return;
            }
        }
    });
    let lost_flag = leading.clone();
    let outcome = tokio::select! {
        _ = work(lost) => {
            if *lost_flag.borrow() { Ok(()) } else { Err(LeaderError::Lost(election.lease.clone())) }
        }
        _ = &mut shutdown => Ok(()),
    };
    drop(leading);
    drop(lost_flag);
    // Closing the channel makes the manager release the lease.
    let _ = task.await;
    outcome
}
