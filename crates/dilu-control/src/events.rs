//! The event log: a bounded history of [`Event`]s, numbered in order, kept in memory, handed to an
//! [`EventStore`] (so a restart keeps the history) and broadcast to live subscribers (the SSE stream).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use dilu_api::{Event, EventKind};
use dilu_core::sync::lock;
use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Where events outlive the process.
pub trait EventStore: Send + Sync {
    /// Keeps `event`, and forgets the oldest beyond `keep`.
    fn append_event(&self, event: &Event, keep: usize) -> Result<(), String>;
    /// The last `limit` events, oldest first.
    fn recent_events(&self, limit: usize) -> Result<Vec<Event>, String>;
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only this function's.
    pub function: Option<String>,
    /// Only these kinds (all when empty).
    pub kinds: Vec<EventKind>,
    /// Only those numbered above this.
    pub since: Option<u64>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn admits(&self, event: &Event) -> bool {
        self.function
            .as_deref()
            .is_none_or(|f| event.function.as_deref() == Some(f))
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && self.since.is_none_or(|s| event.seq > s)
    }
}

/// Milliseconds since the Unix epoch, as the log stamps events.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock.
pub fn system_wall_clock() -> WallClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

struct Inner {
    events: VecDeque<Event>,
    next_seq: u64,
}

/// An event as the live stream carries it: one allocation shared by every subscriber, its JSON written once,
/// by the first subscriber that asks for it, however many followers there are.
#[derive(Debug)]
pub struct LiveEvent {
    /// The event.
    pub event: Event,
    json: OnceLock<String>,
}

impl LiveEvent {
    fn new(event: Event) -> LiveEvent {
        LiveEvent {
            event,
            json: OnceLock::new(),
        }
    }

    /// The event as JSON (an `Event` always serializes; an empty object should that ever change).
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(&self.event).unwrap_or_else(|_| "{}".into()))
    }
}

/// The bounded event history.
pub struct EventLog {
    inner: Mutex<Inner>,
    capacity: usize,
    wall: WallClock,
    store: Mutex<Option<Arc<dyn EventStore>>>,
    live: broadcast::Sender<Arc<LiveEvent>>,
}

impl EventLog {
    /// A log keeping the last `capacity` events, stamped by `wall`.
    pub fn new(capacity: usize, wall: WallClock) -> EventLog {
        let (live, _) = broadcast::channel(1024);
        EventLog {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                next_seq: 1,
            }),
            capacity: capacity.max(1),
            wall,
            store: Mutex::new(None),
            live,
        }
    }

    /// Keeps events in `store` from now on, after loading the history it holds (numbering continues after it).
    pub fn attach(&self, store: Arc<dyn EventStore>) -> Result<(), String> {
        let history = store.recent_events(self.capacity)?;
        let renumbered = {
            let mut inner = lock(&self.inner);
            if let Some(last) = history.last() {
                inner.next_seq = inner.next_seq.max(last.seq + 1);
            }
            let newer: Vec<Event> = inner.events.drain(..).collect();
            inner.events = history.into();
            let mut renumbered = Vec::with_capacity(newer.len());
            for mut e in newer {
                e.seq = inner.next_seq;
                inner.next_seq += 1;
                inner.events.push_back(e.clone());
                renumbered.push(e);
            }
            while inner.events.len() > self.capacity {
                inner.events.pop_front();
            }
            renumbered
        };
        for e in &renumbered {
            store.append_event(e, self.capacity)?;
        }
        *lock(&self.store) = Some(store);
        Ok(())
    }

    /// Records a decision.
    pub fn record(
        &self,
        kind: EventKind,
        function: Option<&str>,
        instance: Option<&str>,
        message: impl Into<String>,
        data: Value,
    ) -> Event {
        let event = {
            let mut inner = lock(&self.inner);
            let event = Event {
                seq: inner.next_seq,
                at_ms: (self.wall)(),
                kind,
                function: function.map(str::to_string),
                instance: instance.map(str::to_string),
                message: message.into(),
                data,
            };
            inner.next_seq += 1;
            inner.events.push_back(event.clone());
            if inner.events.len() > self.capacity {
                inner.events.pop_front();
            }
            event
        };
        if let Some(store) = lock(&self.store).as_ref()
            && let Err(e) = store.append_event(&event, self.capacity)
        {
            eprintln!("dilu: keeping event {}: {e}", event.seq);
        }
        // No subscriber is not an error.
        let _ = self.live.send(Arc::new(LiveEvent::new(event.clone())));
        event
    }

    /// The events `filter` admits, oldest first, at most the last `limit`.
    pub fn list(&self, filter: &EventFilter, limit: usize) -> Vec<Event> {
        let inner = lock(&self.inner);
        let admitted: Vec<&Event> = inner.events.iter().filter(|e| filter.admits(e)).collect();
        let skip = admitted.len().saturating_sub(limit);
        admitted.into_iter().skip(skip).cloned().collect()
    }

    /// Events as they are recorded (a slow subscriber misses the oldest and is told how many).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.live.subscribe()
    }

    /// The number the next event gets.
    pub fn next_seq(&self) -> u64 {
        lock(&self.inner).next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn log(capacity: usize) -> EventLog {
        let t = Arc::new(AtomicU64::new(1_000));
        EventLog::new(
            capacity,
            Arc::new(move || t.fetch_add(10, Ordering::SeqCst)),
        )
    }

    struct Kept(Mutex<Vec<Event>>);

    impl EventStore for Kept {
        fn append_event(&self, event: &Event, keep: usize) -> Result<(), String> {
            let mut v = lock(&self.0);
            v.push(event.clone());
            let excess = v.len().saturating_sub(keep);
            v.drain(..excess);
            Ok(())
        }
        fn recent_events(&self, limit: usize) -> Result<Vec<Event>, String> {
            let v = lock(&self.0);
            Ok(v[v.len().saturating_sub(limit)..].to_vec())
        }
    }

    #[test]
    fn the_history_is_bounded_numbered_and_filtered() {
        let log = log(3);
        for (i, f) in ["a", "b", "a", "a"].iter().enumerate() {
            let kind = if i % 2 == 0 {
                EventKind::ScaleOut
            } else {
                EventKind::Placement
            };
            log.record(kind, Some(f), None, format!("e{i}"), Value::Null);
        }
        let all = log.list(&EventFilter::default(), 100);
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3, 4],
            "the oldest is forgotten"
        );
        assert_eq!(all[0].at_ms, 1_010);
        let a = EventFilter {
            function: Some("a".into()),
            ..EventFilter::default()
        };
        assert_eq!(log.list(&a, 100).len(), 2);
        let scale = EventFilter {
            kinds: vec![EventKind::ScaleOut],
            since: Some(2),
            ..EventFilter::default()
        };
        assert_eq!(
            log.list(&scale, 100)
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>(),
            ["e2"]
        );
        assert_eq!(log.list(&EventFilter::default(), 1)[0].seq, 4);
    }

    #[test]
    fn a_store_keeps_the_history_across_logs_and_numbering_continues() {
        let store = Arc::new(Kept(Mutex::new(Vec::new())));
        let first = log(10);
        first.attach(store.clone()).unwrap();
        first.record(EventKind::Deployed, Some("f"), None, "one", Value::Null);
        first.record(
            EventKind::Placement,
            Some("f"),
            Some("f-1"),
            "two",
            Value::Null,
        );
        let second = log(10);
        second.record(
            EventKind::Deleted,
            Some("g"),
            None,
            "before attach",
            Value::Null,
        );
        second.attach(store.clone()).unwrap();
        let all = second.list(&EventFilter::default(), 100);
        assert_eq!(
            all.iter()
                .map(|e| (e.seq, e.message.as_str()))
                .collect::<Vec<_>>(),
            [(1, "one"), (2, "two"), (3, "before attach")]
        );
        assert_eq!(
            second
                .record(EventKind::Exit, None, None, "next", Value::Null)
                .seq,
            4
        );
    }

    #[tokio::test]
    async fn subscribers_see_events_as_they_come() {
        let log = log(10);
        let mut rx = log.subscribe();
        let mut other = log.subscribe();
        log.record(EventKind::Quota, Some("f"), Some("f-1"), "q", Value::Null);
        let e = rx.recv().await.unwrap();
        assert_eq!((e.event.seq, e.event.kind), (1, EventKind::Quota));
        // Every subscriber gets the same event, serialized once.
        let o = other.recv().await.unwrap();
        assert!(Arc::ptr_eq(&e, &o));
        assert!(std::ptr::eq(e.json(), o.json()));
        let back: Event = serde_json::from_str(o.json()).unwrap();
        assert_eq!(back, e.event);
    }
}
