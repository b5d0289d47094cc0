//! The embedded store: functions (spec, generation, profile) in one SQLite file, so a restarted `dilu up`
//! restores what was deployed; it is `dilu up`'s [`FunctionStore`]. Writes are transactions in WAL mode; a
//! crash loses at most the write in progress.
//!
//! Instances are not stored: the agent keeps them with the labels that say whose they are. The `instances`
//! table of schema versions 1 and 2 is still read, so instances started by an older `dilu up` are adopted; the
//! process backend deletes a row once the agent no longer runs its instance (at start, or when a later `list`
//! no longer sees it), so no row outlives its instance.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use dilu_api::{Event, FunctionSpec, Profile};
use dilu_control::events::EventStore;
use dilu_control::store::{FunctionStore, StoreError as ControlStoreError, StoredFunction};

/// The mode of `dilu.db` and of SQLite's `-wal` and `-shm` files next to it: the functions' specs are the
/// operator's business only. SQLite creates the `-wal` and `-shm` files with the database file's mode.
pub const DB_FILE_MODE: u32 = 0o600;

/// Schema version kept in `PRAGMA user_version`; a newer file is refused rather than misread.
/// Version 2 added `instances.model_key`.
const SCHEMA_VERSION: i64 = 2;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored document no longer parses.
    #[error("store: row {key}: {reason}")]
    Corrupt {
        /// Which row.
        key: String,
        /// Why.
        reason: String,
    },
    /// A database file could not be created private or made private.
    #[error(
        "store: {path}: cannot make it readable by its owner only ({DB_FILE_MODE:o}): {reason}"
    )]
    Private {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        reason: std::io::Error,
    },
    /// The file was written by a newer Dilu.
    #[error(
        "store: schema version {found} is newer than this build's {SCHEMA_VERSION}; upgrade dilu"
    )]
    TooNew {
        /// The version found.
        found: i64,
    },
}

/// An instance recorded by a `dilu up` from before instances carried labels (schema versions 1 and 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInstance {
    /// The agent's instance id.
    pub id: String,
    /// Its function.
    pub function: String,
    /// Node name.
    pub node: String,
    /// Device UUID.
    pub device: String,
    /// Port its server listens on (loopback).
    pub port: u16,
    /// Whether it was started to profile (and is not yet serving).
    pub profiling: bool,
    /// What it runs (kind, model, training settings) in a comparable form, so a restart can tell an instance
    /// left from an earlier generation; `None` for instances recorded before schema version 2.
    pub model_key: Option<String>,
}

/// The store.
pub struct Store {
    conn: Mutex<Connection>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `path`. The database file is created with mode
    /// [`DB_FILE_MODE`], so SQLite creates its `-wal` and `-shm` files so too; files an earlier version left
    /// readable by others are tightened to it first.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        make_private(path)?;
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found: version });
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS functions (
                 name TEXT PRIMARY KEY,
                 spec TEXT NOT NULL,
                 profile TEXT,
                 generation INTEGER NOT NULL,
                 created_unix INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS instances (
                 id TEXT PRIMARY KEY,
                 function TEXT NOT NULL,
                 node TEXT NOT NULL,
                 device TEXT NOT NULL,
                 port INTEGER NOT NULL,
                 profiling INTEGER NOT NULL DEFAULT 0,
                 model_key TEXT
             );
             CREATE INDEX IF NOT EXISTS instances_by_function ON instances(function);
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY,
                 at_ms INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 function TEXT,
                 instance TEXT,
                 message TEXT NOT NULL,
                 data TEXT
             );",
        )?;
        // A version-1 file has the table without the column.
        let has_model_key = conn
            .prepare("SELECT 1 FROM pragma_table_info('instances') WHERE name = 'model_key'")?
            .exists([])?;
        if !has_model_key {
            conn.execute_batch("ALTER TABLE instances ADD COLUMN model_key TEXT")?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        dilu_core::sync::lock(&self.conn)
    }

    /// Inserts a new function; `false` when the name is taken.
    pub fn insert_function(&self, spec: &FunctionSpec) -> Result<bool, StoreError> {
        let text = to_json(spec)?;
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO functions (name, spec, profile, generation, created_unix)
             VALUES (?1, ?2, NULL, 1, ?3)",
            params![spec.name, text, unix_now() as i64],
        )?;
        Ok(n == 1)
    }

    /// Replaces a function's spec and profile and bumps its generation; the new generation, `None` when
    /// there is no such function.
    pub fn update_function(
        &self,
        spec: &FunctionSpec,
        profile: Option<&Profile>,
    ) -> Result<Option<u64>, StoreError> {
        let text = to_json(spec)?;
        let profile = profile.map(to_json).transpose()?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE functions SET spec = ?2, profile = ?3, generation = generation + 1 WHERE name = ?1",
            params![spec.name, text, profile],
        )?;
        let generation = if n == 1 {
            let g: i64 = tx.query_row(
                "SELECT generation FROM functions WHERE name = ?1",
                params![spec.name],
                |r| r.get(0),
            )?;
            Some(g.max(0) as u64)
        } else {
            None
        };
        tx.commit()?;
        Ok(generation)
    }

    /// Stores (or clears) a function's profile.
    pub fn set_profile(&self, name: &str, profile: Option<&Profile>) -> Result<(), StoreError> {
        let text = profile.map(to_json).transpose()?;
        self.conn().execute(
            "UPDATE functions SET profile = ?2 WHERE name = ?1",
            params![name, text],
        )?;
        Ok(())
    }

    /// Deletes a function and its instance rows; `false` when there was none.
    pub fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM functions WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM instances WHERE function = ?1", params![name])?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// One function.
    pub fn function(&self, name: &str) -> Result<Option<StoredFunction>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT name, spec, profile, generation, created_unix FROM functions WHERE name = ?1",
                params![name],
                function_row,
            )
            .optional()?;
        row.map(parse_function).transpose()
    }

    /// Every function, by name.
    pub fn functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, spec, profile, generation, created_unix FROM functions ORDER BY name",
        )?;
        let rows = stmt.query_map([], function_row)?;
        rows.map(|r| parse_function(r?)).collect()
    }

    /// Records an instance (the layout of schema versions 1 and 2; kept for reading their files).
    pub fn insert_instance(&self, instance: &StoredInstance) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO instances (id, function, node, device, port, profiling, model_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                instance.id,
                instance.function,
                instance.node,
                instance.device,
                instance.port,
                instance.profiling,
                instance.model_key
            ],
        )?;
        Ok(())
    }

    /// Forgets an instance.
    pub fn delete_instance(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM instances WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every instance, in creation order of ids.
    pub fn instances(&self) -> Result<Vec<StoredInstance>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, function, node, device, port, profiling, model_key FROM instances ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StoredInstance {
                id: r.get(0)?,
                function: r.get(1)?,
                node: r.get(2)?,
                device: r.get(3)?,
                port: r.get(4)?,
                profiling: r.get(5)?,
                model_key: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Creates the database file with mode [`DB_FILE_MODE`] when it is absent, and sets that mode on it and on
/// its `-wal` and `-shm` files when they exist.
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // An empty file is an empty database to SQLite.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(DB_FILE_MODE)
        .open(path)
        .map_err(|reason| private(path, reason))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o777 == DB_FILE_MODE => {}
            Ok(_) => std::fs::set_permissions(&file, std::fs::Permissions::from_mode(DB_FILE_MODE))
                .map_err(|reason| private(&file, reason))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(private(&file, e)),
        }
    }
    Ok(())
}

fn private(path: &Path, reason: std::io::Error) -> StoreError {
    StoreError::Private {
        path: path.to_path_buf(),
        reason,
    }
}

type FunctionRow = (String, String, Option<String>, i64, i64);

fn function_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FunctionRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn parse_function(row: FunctionRow) -> Result<StoredFunction, StoreError> {
    let (name, spec, profile, generation, _created) = row;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt {
        key: format!("functions/{name}"),
        reason: e.to_string(),
    };
    Ok(StoredFunction {
        spec: serde_json::from_str(&spec).map_err(corrupt)?,
        profile: profile
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(corrupt)?,
        generation: generation.max(0) as u64,
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        key: "(new row)".into(),
        reason: e.to_string(),
    })
}

fn control(e: StoreError) -> ControlStoreError {
    ControlStoreError(e.to_string())
}

/// The event history (the `events` table), bounded to the newest `keep` rows.
impl EventStore for Store {
    fn append_event(&self, event: &Event, keep: usize) -> Result<(), String> {
        let mut conn = self.conn();
        let data = (!event.data.is_null()).then(|| event.data.to_string());
        // One transaction and cached statements: an event costs one WAL commit, not two statements' worth.
        let append = |conn: &mut Connection| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction()?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO events (seq, at_ms, kind, function, instance, message, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                event.seq as i64,
                event.at_ms as i64,
                event.kind.as_str(),
                event.function,
                event.instance,
                event.message,
                data
            ])?;
            let oldest_kept = event.seq as i64 - keep as i64;
            if oldest_kept > 0 {
                tx.prepare_cached("DELETE FROM events WHERE seq <= ?1")?
                    .execute(params![oldest_kept])?;
            }
            tx.commit()
        };
        append(&mut conn).map_err(|e| e.to_string())
    }

    fn recent_events(&self, limit: usize) -> Result<Vec<Event>, String> {
        let conn = self.conn();
        let read = || -> Result<Vec<(String, Event)>, rusqlite::Error> {
            let mut stmt = conn.prepare(
                "SELECT seq, at_ms, kind, function, instance, message, data FROM events
                 ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64], |r| {
                let kind: String = r.get(2)?;
                let data: Option<String> = r.get(6)?;
                Ok((
                    kind,
                    Event {
                        seq: r.get::<_, i64>(0)? as u64,
                        at_ms: r.get::<_, i64>(1)? as u64,
                        kind: dilu_api::EventKind::Deployed,
                        function: r.get(3)?,
                        instance: r.get(4)?,
                        message: r.get(5)?,
                        data: data
                            .and_then(|d| serde_json::from_str(&d).ok())
                            .unwrap_or_default(),
                    },
                ))
            })?;
            rows.collect()
        };
        let mut events = Vec::new();
        for (kind, mut event) in read().map_err(|e| e.to_string())? {
            // Rows of a kind this build does not know (from a newer one) are skipped.
            if let Ok(kind) = kind.parse() {
                event.kind = kind;
                events.push(event);
            }
        }
        events.reverse();
        Ok(events)
    }
}

impl FunctionStore for Store {
    fn functions(&self) -> Result<Vec<StoredFunction>, ControlStoreError> {
        Store::functions(self).map_err(control)
    }

    fn insert(&self, spec: &FunctionSpec) -> Result<bool, ControlStoreError> {
        self.insert_function(spec).map_err(control)
    }

    fn update(
        &self,
        spec: &FunctionSpec,
        profile: Option<&Profile>,
    ) -> Result<Option<u64>, ControlStoreError> {
        self.update_function(spec, profile).map_err(control)
    }

    fn set_profile(&self, name: &str, profile: Option<&Profile>) -> Result<(), ControlStoreError> {
        Store::set_profile(self, name, profile).map_err(control)
    }

    fn delete(&self, name: &str) -> Result<bool, ControlStoreError> {
        self.delete_function(name).map_err(control)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dilu_api::{SpecFormat, parse_spec};

    fn spec(name: &str) -> FunctionSpec {
        parse_spec(
            &format!("name: {name}\nmodel: {{path: /m.onnx}}\nslo_ms: 50\n"),
            SpecFormat::Yaml,
        )
        .unwrap()
    }

    #[test]
    fn events_keep_the_last_ones_in_order_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dilu.db");
        let event = |seq: u64| Event {
            seq,
            at_ms: 1_000 + seq,
            kind: dilu_api::EventKind::Vertical,
            function: Some("f".into()),
            instance: seq.is_multiple_of(2).then(|| format!("f-{seq}")),
            message: format!("event {seq}"),
            data: if seq.is_multiple_of(3) {
                serde_json::Value::Null
            } else {
                serde_json::json!({"to": seq as f64 / 100.0})
            },
        };
        {
            let store = Store::open(&path).unwrap();
            for seq in 1..=30 {
                store.append_event(&event(seq), 10).unwrap();
            }
            // Rewriting a kept event replaces it.
            store.append_event(&event(30), 10).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let kept = store.recent_events(100).unwrap();
        assert_eq!(kept, (21..=30).map(event).collect::<Vec<_>>());
        assert_eq!(
            store.recent_events(3).unwrap(),
            (28..=30).map(event).collect::<Vec<_>>()
        );
    }

    #[test]
    fn functions_and_instances_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dilu.db");
        {
            let store = Store::open(&path).unwrap();
            assert!(store.insert_function(&spec("a")).unwrap());
            assert!(!store.insert_function(&spec("a")).unwrap(), "name taken");
            assert!(store.insert_function(&spec("b")).unwrap());
            let profile = Profile {
                request: 0.2,
                limit: 0.5,
                batch: 4,
                capacity_rps: 120.0,
                capacity_full_rps: None,
                latency_s: Some(0.03),
                source: "hgs".into(),
                measurements: 6,
                seconds: 9.5,
            };
            store.set_profile("a", Some(&profile)).unwrap();
            store
                .insert_instance(&StoredInstance {
                    id: "i-1".into(),
                    function: "a".into(),
                    node: "local".into(),
                    device: "CPU-1".into(),
                    port: 4000,
                    profiling: false,
                    model_key: Some("k1".into()),
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let all = store.functions().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].profile.as_ref().unwrap().batch, 4);
        let inst = store.instances().unwrap();
        assert_eq!(inst.len(), 1);
        assert!(!inst[0].profiling);
        assert_eq!(inst[0].model_key.as_deref(), Some("k1"));
        let mut changed = spec("a");
        changed.slo_ms = Some(80.0);
        assert_eq!(store.update_function(&changed, None).unwrap(), Some(2));
        let a = store.function("a").unwrap().unwrap();
        assert_eq!((a.generation, a.profile.is_none()), (2, true));
        assert_eq!(store.update_function(&spec("zz"), None).unwrap(), None);
        assert!(store.delete_function("a").unwrap());
        assert!(store.instances().unwrap().is_empty());
        assert!(!store.delete_function("a").unwrap());
        assert!(store.function("a").unwrap().is_none());
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn db_files(dir: &Path) -> Vec<std::path::PathBuf> {
        ["dilu.db", "dilu.db-wal", "dilu.db-shm"]
            .iter()
            .map(|n| dir.join(n))
            .collect()
    }

    #[test]
    fn the_database_and_its_wal_are_private_to_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dilu.db");
        let store = Store::open(&path).unwrap();
        assert!(store.insert_function(&spec("a")).unwrap());
        for file in db_files(dir.path()) {
            assert_eq!(mode(&file), 0o600, "{}: {:o}", file.display(), mode(&file));
        }
    }

    #[test]
    fn existing_world_readable_database_files_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dilu.db");
        let store = Store::open(&path).unwrap();
        assert!(store.insert_function(&spec("a")).unwrap());
        // As an earlier version left them (with a umask of 022); the first connection keeps the WAL open.
        for file in db_files(dir.path()) {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let again = Store::open(&path).unwrap();
        assert_eq!(again.functions().unwrap().len(), 1);
        for file in db_files(dir.path()) {
            assert_eq!(mode(&file), 0o600, "{}: {:o}", file.display(), mode(&file));
        }
        drop((store, again));
        // Closed, the WAL is gone; a 0644 database file is tightened too, and its new WAL follows it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&path).unwrap();
        assert!(store.insert_function(&spec("b")).unwrap());
        for file in db_files(dir.path()) {
            assert_eq!(mode(&file), 0o600, "{}: {:o}", file.display(), mode(&file));
        }
    }

    #[test]
    fn a_version_1_file_gains_the_model_key_column_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dilu.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE functions (name TEXT PRIMARY KEY, spec TEXT NOT NULL, profile TEXT,
                     generation INTEGER NOT NULL, created_unix INTEGER NOT NULL);
                 CREATE TABLE instances (id TEXT PRIMARY KEY, function TEXT NOT NULL, node TEXT NOT NULL,
                     device TEXT NOT NULL, port INTEGER NOT NULL, profiling INTEGER NOT NULL DEFAULT 0);
                 INSERT INTO instances VALUES ('i-1', 'a', 'local', 'CPU-1', 4000, 0);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let inst = store.instances().unwrap();
        assert_eq!(inst.len(), 1);
        assert_eq!(
            (inst[0].id.as_str(), inst[0].model_key.as_deref()),
            ("i-1", None)
        );
        drop(store);
        // Opening again (now version 2) changes nothing.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.instances().unwrap().len(), 1);
    }
}
