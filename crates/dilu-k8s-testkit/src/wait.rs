//! Waiting for a condition in tests.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] looks.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` every [`POLL`] until it gives `Some`, and returns that. Test support: panics naming `what`
/// when `timeout` passes first.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until a (core `v1`) Event about the object named `object` with reason `reason` is in
/// `namespace` (cluster-scoped objects' events are in `default`), and returns it. Test support: panics when
/// `timeout` passes first, listing the reasons that were there.
pub async fn event_for(
    client: &kube::Client,
    namespace: &str,
    object: &str,
    reason: &str,
    timeout: Duration,
) -> k8s_openapi::api::core::v1::Event {
    use k8s_openapi::api::core::v1::Event;
    let api: kube::Api<Event> = kube::Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    loop {
        let list = api
            .list(&kube::api::ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let about = |e: &Event| e.involved_object.name.as_deref() == Some(object);
        if let Some(found) = list
            .iter()
            .find(|e| about(e) && e.reason.as_deref() == Some(reason))
        {
            return found.clone();
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = list
                .iter()
                .map(|e| {
                    format!(
                        "{} on {}",
                        e.reason.as_deref().unwrap_or("?"),
                        e.involved_object.name.as_deref().unwrap_or("?")
                    )
                })
                .collect();
            panic!(
                "timed out ({timeout:?}) waiting for a {reason} event about {object} in {namespace}; there: {seen:?}"
            );
        }
        tokio::time::sleep(POLL * 5).await;
    }
}
