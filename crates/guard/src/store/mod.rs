//! guard's history: every rollout, each step it went through, its verdict and
//! evidence, the release that runs now per target and what notifiers delivered.
//!
//! One SQLite file (WAL, `synchronous=FULL`) behind a mutex. The engine writes a
//! transition here *before* it performs the platform action the new phase leads
//! to, so the store is the source of truth after a crash: a rollout whose row is
//! `active` is resumed from its recorded phase.
//!
//! All methods are synchronous and short (one small transaction); callers on
//! the async runtime call them directly.
//!
//! One guard per store: `guard serve` and `guard controller` open it with
//! [`Store::open_exclusive`], which holds an advisory lock on `<store>.lock`
//! for as long as the process lives (the kernel drops it when the process
//! dies, even by SIGKILL), so a second guard on the same file refuses to
//! start instead of resuming and acting on the first one's rollouts.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::engine::phase::Phase;
use crate::platform::{Build, Strategy, Target};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (file unreadable, disk full, schema mismatch).
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A JSON column did not decode (a file written by an incompatible guard).
    #[error("store: corrupt {column} in rollout {id}: {detail}")]
    Corrupt {
        id: i64,
        column: &'static str,
        detail: String,
    },
    /// The target already has an active rollout; one at a time per target.
    #[error("{service} in {environment} already has rollout {id} in progress")]
    Busy {
        service: String,
        environment: String,
        id: i64,
    },
    /// No rollout with that id.
    #[error("no rollout {0}")]
    NotFound(i64),
    /// Another guard process holds the store.
    #[error(
        "the store {path} is in use by another guard{holder}: one guard per store; stop that one, or give this one its own `store:`"
    )]
    InUse { path: String, holder: String },
    /// The store's directory is missing and cannot be made.
    #[error(
        "cannot create the store's directory {path} (set `store:` in guard.yaml to a file guard may write)"
    )]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The lock file next to the store could not be opened or locked.
    #[error("cannot lock the store: {path} (set `store:` in guard.yaml to a file guard may write)")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A rollout as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: i64,
    pub target: Target,
    pub strategy: Strategy,
    /// What a rollout does: verify a new build, or put an older one back by hand.
    pub kind: RolloutKind,
    /// The release that ran before; `None` for a target's first release.
    pub stable: Option<Build>,
    pub candidate: Build,
    pub phase: Phase,
    /// `true` until the rollout reaches a terminal phase.
    pub active: bool,
    /// `promote`, `revert`, `hold`, `abort`, `rollback` once decided.
    pub verdict: Option<String>,
    pub reason: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// When the candidate first took traffic.
    pub traffic_at_ms: Option<i64>,
    /// When the verdict (promote or revert) was reached.
    pub verdict_at_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// The judge's numbers behind the verdict.
    pub evidence: Option<notify::Evidence>,
    /// Who asked (`cli`, `api`, `demo`, `kubernetes`).
    pub requested_by: String,
}

#[cfg(test)]
impl RolloutRecord {
    /// A deploy of `web` to `production` from build 1 to 2, verifying at
    /// `share`, as unit tests elsewhere in the crate need one.
    pub(crate) fn verifying_for_tests(share: f64, created_ms: i64) -> RolloutRecord {
        let build = |n: &str| Build {
            number: n.into(),
            commit: None,
            image: Some(format!("ub:{n}")),
            command: vec![],
            env: Default::default(),
        };
        RolloutRecord {
            id: 1,
            target: Target {
                service: "web".into(),
                environment: "production".into(),
            },
            strategy: Strategy::Rolling,
            kind: RolloutKind::Deploy,
            stable: Some(build("1")),
            candidate: build("2"),
            phase: Phase::Verifying { step: 0, share },
            active: true,
            verdict: None,
            reason: None,
            created_ms,
            updated_ms: created_ms,
            traffic_at_ms: None,
            verdict_at_ms: None,
            finished_ms: None,
            evidence: None,
            requested_by: "ci".into(),
        }
    }
}

impl RolloutRecord {
    /// The build the rollout puts in place and the one it replaces, as
    /// people read them (a rollback's record keeps the build it goes back to
    /// as `stable` and the one it leaves as `candidate`); `-` for none.
    pub fn builds_shown(&self) -> (&str, &str) {
        let stable = self.stable.as_ref().map_or("-", |b| b.number.as_str());
        let candidate = self.candidate.number.as_str();
        if self.kind == RolloutKind::Rollback {
            (stable, candidate)
        } else {
            (candidate, stable)
        }
    }

    /// Seconds from the candidate taking traffic to the verdict.
    pub fn seconds_to_verdict(&self) -> Option<f64> {
        match (self.traffic_at_ms, self.verdict_at_ms) {
            (Some(t), Some(v)) => Some((v - t).max(0) as f64 / 1000.0),
            _ => None,
        }
    }

    /// Like [`RolloutRecord::seconds_to_verdict`], with `now_ms` standing in
    /// for a verdict not recorded in this copy yet.
    pub fn seconds_to_verdict_at(&self, now_ms: i64) -> Option<f64> {
        let t = self.traffic_at_ms?;
        Some((self.verdict_at_ms.unwrap_or(now_ms) - t).max(0) as f64 / 1000.0)
    }
}

/// What a rollout is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutKind {
    /// Roll a new build out and verify it.
    Deploy,
    /// Put an older build back by hand (`guard rollback`); no verification.
    Rollback,
}

/// One recorded transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub from: Option<String>,
    pub to: String,
    pub phase: Phase,
    /// What caused it: `deploy`, `acted`, `verdict`, `source_down`, `command:pause`...
    pub cause: String,
    pub detail: Option<String>,
    pub evidence: Option<notify::Evidence>,
}

/// A notification delivery attempt, as reported back by the notify dispatcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub at_ms: i64,
    pub notifier: String,
    pub event: String,
    pub ok: bool,
    pub detail: Option<String>,
}

/// A new rollout to record.
#[derive(Clone, Debug)]
pub struct NewRollout {
    pub target: Target,
    pub strategy: Strategy,
    pub kind: RolloutKind,
    pub stable: Option<Build>,
    pub candidate: Build,
    pub phase: Phase,
    pub requested_by: String,
}

/// A transition to record atomically with the rollout row update.
#[derive(Clone, Debug)]
pub struct Transition<'a> {
    pub id: i64,
    pub from: &'a Phase,
    pub to: &'a Phase,
    pub cause: &'a str,
    pub detail: Option<&'a str>,
    pub evidence: Option<&'a notify::Evidence>,
    pub at_ms: i64,
}

/// A notification some notifiers never answered ([`Store::pending_notices`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingNotice {
    pub rollout_id: i64,
    /// The event as queued (JSON).
    pub event: serde_json::Value,
    /// The notifiers that have not answered it.
    pub missing: Vec<String>,
}

/// The SQLite store.
pub struct Store {
    conn: Mutex<Connection>,
    /// Held for the store's lifetime by [`Store::open_exclusive`].
    _lock: Option<Flock<File>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollouts(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  service TEXT NOT NULL,
  environment TEXT NOT NULL,
  strategy TEXT NOT NULL,
  kind TEXT NOT NULL,
  stable TEXT,
  candidate TEXT NOT NULL,
  candidate_number TEXT NOT NULL,
  phase TEXT NOT NULL,
  state TEXT NOT NULL,
  active INTEGER NOT NULL,
  verdict TEXT,
  reason TEXT,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  traffic_at_ms INTEGER,
  verdict_at_ms INTEGER,
  finished_ms INTEGER,
  evidence TEXT,
  requested_by TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_active
  ON rollouts(service, environment) WHERE active = 1;
CREATE INDEX IF NOT EXISTS rollouts_target ON rollouts(service, environment, id);
CREATE TABLE IF NOT EXISTS steps(
  rollout_id INTEGER NOT NULL REFERENCES rollouts(id),
  seq INTEGER NOT NULL,
  at_ms INTEGER NOT NULL,
  from_state TEXT,
  to_state TEXT NOT NULL,
  phase TEXT NOT NULL,
  cause TEXT NOT NULL,
  detail TEXT,
  evidence TEXT,
  PRIMARY KEY (rollout_id, seq)
);
CREATE TABLE IF NOT EXISTS releases(
  service TEXT NOT NULL,
  environment TEXT NOT NULL,
  build TEXT NOT NULL,
  number TEXT NOT NULL,
  at_ms INTEGER NOT NULL,
  rollout_id INTEGER,
  PRIMARY KEY (service, environment)
);
CREATE TABLE IF NOT EXISTS judge_checkpoints(
  rollout_id INTEGER PRIMARY KEY REFERENCES rollouts(id),
  state TEXT NOT NULL,
  at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  rollout_id INTEGER NOT NULL,
  kind TEXT NOT NULL,
  notifiers TEXT NOT NULL,
  event TEXT NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries(
  rollout_id INTEGER NOT NULL,
  at_ms INTEGER NOT NULL,
  notifier TEXT NOT NULL,
  event TEXT NOT NULL,
  ok INTEGER NOT NULL,
  detail TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_rollout ON deliveries(rollout_id, notifier);
CREATE TABLE IF NOT EXISTS notifier_links(
  rollout_id INTEGER NOT NULL,
  notifier TEXT NOT NULL,
  created INTEGER NOT NULL,
  PRIMARY KEY (rollout_id, notifier)
);
";

const ROLLOUT_COLUMNS: &str = "id, service, environment, strategy, kind, stable, candidate, phase, active, \
     verdict, reason, created_ms, updated_ms, traffic_at_ms, verdict_at_ms, finished_ms, evidence, requested_by";

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising our own plain data types cannot fail (no maps with non-string keys).
    serde_json::to_string(value).unwrap_or_else(|e| format!("\"unserialisable: {e}\""))
}

fn strategy_str(s: Strategy) -> &'static str {
    match s {
        Strategy::Rolling => "rolling",
        Strategy::Canary => "canary",
    }
}

fn kind_str(k: RolloutKind) -> &'static str {
    match k {
        RolloutKind::Deploy => "deploy",
        RolloutKind::Rollback => "rollback",
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            // Best effort: SQLite reports a clear error if the directory is still missing.
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// Opens the store at `path` for this process alone: fails with
    /// [`StoreError::InUse`] (naming the holder's pid) while another process
    /// holds it. The lock lives as long as the returned store.
    pub fn open_exclusive(path: &Path) -> Result<Self, StoreError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = std::path::PathBuf::from(lock_path);
        let shown = lock_path.display().to_string();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| StoreError::Lock {
                path: shown.clone(),
                source,
            })?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(StoreError::InUse {
                    path: path.display().to_string(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid}, per {shown})")
                    },
                });
            }
            Err((_, errno)) => {
                return Err(StoreError::Lock {
                    path: shown,
                    source: errno.into(),
                });
            }
        };
        // Who holds it, for the message a second guard prints.
        let written = lock
            .set_len(0)
            .and_then(|()| write!(lock, "{}", std::process::id()));
        if let Err(source) = written {
            return Err(StoreError::Lock {
                path: shown,
                source,
            });
        }
        let mut store = Self::open(path)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// An in-memory store (tests, benchmarks that measure without disk).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        // WAL: readers (API) never block the engine's writes; FULL: a committed
        // transition survives power loss, which the resume guarantee relies on.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
            _lock: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new rollout and its first step. Fails with [`StoreError::Busy`]
    /// when the target already has an active rollout.
    pub fn create_rollout(&self, new: &NewRollout, at_ms: i64) -> Result<i64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(id) = tx
            .query_row(
                "SELECT id FROM rollouts WHERE service = ?1 AND environment = ?2 AND active = 1",
                params![new.target.service, new.target.environment],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
        {
            return Err(StoreError::Busy {
                service: new.target.service.clone(),
                environment: new.target.environment.clone(),
                id,
            });
        }
        tx.execute(
            "INSERT INTO rollouts(service, environment, strategy, kind, stable, candidate, candidate_number, \
             phase, state, active, created_ms, updated_ms, requested_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?10, ?11)",
            params![
                new.target.service,
                new.target.environment,
                strategy_str(new.strategy),
                kind_str(new.kind),
                new.stable.as_ref().map(to_json),
                to_json(&new.candidate),
                new.candidate.number,
                to_json(&new.phase),
                new.phase.name(),
                at_ms,
                new.requested_by,
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO steps(rollout_id, seq, at_ms, from_state, to_state, phase, cause) \
             VALUES (?1, 1, ?2, NULL, ?3, ?4, ?5)",
            params![
                id,
                at_ms,
                new.phase.name(),
                to_json(&new.phase),
                format!("{}:{}", kind_str(new.kind), new.requested_by)
            ],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Records a transition: appends a step and updates the rollout row in one
    /// transaction. Derived columns (verdict, timestamps, active) follow the new phase.
    pub fn record_transition(&self, t: &Transition<'_>) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE rollout_id = ?1",
            params![t.id],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO steps(rollout_id, seq, at_ms, from_state, to_state, phase, cause, detail, evidence) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                t.id,
                seq,
                t.at_ms,
                t.from.name(),
                t.to.name(),
                to_json(t.to),
                t.cause,
                t.detail,
                t.evidence.map(to_json),
            ],
        )?;
        let active = !t.to.is_terminal();
        let changed = tx.execute(
            "UPDATE rollouts SET phase = ?2, state = ?3, active = ?4, updated_ms = ?5, \
               evidence = COALESCE(?6, evidence) WHERE id = ?1",
            params![
                t.id,
                to_json(t.to),
                t.to.name(),
                active,
                t.at_ms,
                t.evidence.map(to_json)
            ],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(t.id));
        }
        if t.to.takes_traffic() {
            tx.execute(
                "UPDATE rollouts SET traffic_at_ms = COALESCE(traffic_at_ms, ?2) WHERE id = ?1",
                params![t.id, t.at_ms],
            )?;
        }
        if let Some(verdict) = t.to.verdict() {
            tx.execute(
                "UPDATE rollouts SET verdict = ?2, reason = COALESCE(?3, reason), \
                   verdict_at_ms = COALESCE(verdict_at_ms, ?4) WHERE id = ?1",
                params![t.id, verdict, t.detail, t.at_ms],
            )?;
        } else if let Phase::Held { reason, .. } = t.to {
            tx.execute(
                "UPDATE rollouts SET verdict = 'hold', reason = ?2 WHERE id = ?1",
                params![t.id, reason],
            )?;
        } else if matches!(t.from, Phase::Held { .. }) {
            // Resumed: the hold's reason no longer describes the rollout.
            tx.execute(
                "UPDATE rollouts SET verdict = NULL, reason = NULL WHERE id = ?1 AND verdict = 'hold'",
                params![t.id],
            )?;
        }
        if t.to.is_terminal() {
            tx.execute(
                "UPDATE rollouts SET finished_ms = ?2 WHERE id = ?1",
                params![t.id, t.at_ms],
            )?;
            // A finished rollout is never judged again.
            tx.execute(
                "DELETE FROM judge_checkpoints WHERE rollout_id = ?1",
                params![t.id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Keeps a rollout's notification (`kind` as the delivery log names it,
    /// `event` as JSON), sent to `notifiers`, until each of them has answered
    /// it, so a guard killed before they did sends it again when it starts.
    pub fn queue_notice(
        &self,
        rollout_id: i64,
        kind: &str,
        notifiers: &[String],
        event: &serde_json::Value,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO outbox(rollout_id, kind, notifiers, event, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![rollout_id, kind, to_json(&notifiers), event.to_string(), at_ms],
        )?;
        Ok(())
    }

    /// The queued notifications that some notifier they were sent to, and
    /// that is still `configured`, has not answered (delivered or given up
    /// on), each with those notifiers; forgets the others.
    pub fn pending_notices(&self, configured: &[&str]) -> Result<Vec<PendingNotice>, StoreError> {
        self.sweep_notices(configured, i64::MAX)
    }

    /// Forgets the notifications queued before `before_ms` that every
    /// `configured` notifier they went to has answered, so that a guard
    /// running for months keeps only what may still need a resend.
    pub fn forget_answered_notices(
        &self,
        configured: &[&str],
        before_ms: i64,
    ) -> Result<(), StoreError> {
        self.sweep_notices(configured, before_ms).map(drop)
    }

    /// [`Store::pending_notices`] over the notifications queued before `before_ms`.
    fn sweep_notices(
        &self,
        configured: &[&str],
        before_ms: i64,
    ) -> Result<Vec<PendingNotice>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        type Row = (i64, i64, String, String, String, i64);
        let queued: Vec<Row> = {
            let mut stmt = tx.prepare(
                "SELECT id, rollout_id, kind, notifiers, event, created_ms FROM outbox \
                 WHERE created_ms < ?1 ORDER BY id",
            )?;
            stmt.query_map(params![before_ms], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut pending = Vec::new();
        for (id, rollout_id, kind, notifiers, event, created_ms) in queued {
            let corrupt = |column: &'static str, e: serde_json::Error| StoreError::Corrupt {
                id: rollout_id,
                column,
                detail: e.to_string(),
            };
            let notifiers: Vec<String> =
                serde_json::from_str(&notifiers).map_err(|e| corrupt("outbox.notifiers", e))?;
            let mut missing = Vec::new();
            for notifier in notifiers
                .iter()
                .filter(|n| configured.contains(&n.as_str()))
            {
                // Deliveries are logged as "<kind> (<action>)".
                let answered: bool = tx.query_row(
                    "SELECT EXISTS(SELECT 1 FROM deliveries WHERE rollout_id = ?1 AND notifier = ?2 \
                       AND substr(event, 1, length(?3) + 2) = ?3 || ' (' AND at_ms >= ?4)",
                    params![rollout_id, notifier, kind, created_ms],
                    |r| r.get(0),
                )?;
                if !answered {
                    missing.push(notifier.clone());
                }
            }
            if missing.is_empty() {
                tx.execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
                continue;
            }
            let event = serde_json::from_str(&event).map_err(|e| corrupt("outbox.event", e))?;
            pending.push(PendingNotice {
                rollout_id,
                event,
                missing,
            });
        }
        tx.commit()?;
        Ok(pending)
    }

    /// Replaces an active rollout's judge checkpoint (opaque JSON written by
    /// the engine), so a restarted guard goes on judging with the evidence
    /// gathered so far instead of starting its tests afresh. A finished
    /// rollout takes no checkpoint ([`StoreError::NotFound`]).
    pub fn save_judge_checkpoint(
        &self,
        rollout_id: i64,
        state: &serde_json::Value,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        let changed = conn.execute(
            "INSERT INTO judge_checkpoints(rollout_id, state, at_ms) \
             SELECT id, ?2, ?3 FROM rollouts WHERE id = ?1 AND active = 1 \
             ON CONFLICT(rollout_id) DO UPDATE SET state = excluded.state, at_ms = excluded.at_ms",
            params![rollout_id, state.to_string(), at_ms],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound(rollout_id));
        }
        Ok(())
    }

    /// The latest judge checkpoint of an active rollout, if one was saved.
    pub fn judge_checkpoint(
        &self,
        rollout_id: i64,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let conn = self.lock();
        let text: Option<String> = conn
            .query_row(
                "SELECT state FROM judge_checkpoints WHERE rollout_id = ?1",
                params![rollout_id],
                |r| r.get(0),
            )
            .optional()?;
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    id: rollout_id,
                    column: "judge_checkpoints.state",
                    detail: e.to_string(),
                }),
        }
    }

    /// Records which build runs now for a target (after a promote or a revert).
    pub fn set_release(
        &self,
        target: &Target,
        build: &Build,
        rollout_id: Option<i64>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO releases(service, environment, build, number, at_ms, rollout_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(service, environment) DO UPDATE SET build = ?3, number = ?4, at_ms = ?5, rollout_id = ?6",
            params![target.service, target.environment, to_json(build), build.number, at_ms, rollout_id],
        )?;
        Ok(())
    }

    /// The build that runs now for a target, if guard ever released one.
    pub fn release(&self, target: &Target) -> Result<Option<Build>, StoreError> {
        let json: Option<String> = self
            .lock()
            .query_row(
                "SELECT build FROM releases WHERE service = ?1 AND environment = ?2",
                params![target.service, target.environment],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| StoreError::Corrupt {
                id: 0,
                column: "releases.build",
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// The build that ran before the current release: the `stable` of the last
    /// promoted rollout of the target.
    pub fn previous_release(&self, target: &Target) -> Result<Option<Build>, StoreError> {
        let json: Option<Option<String>> = self
            .lock()
            .query_row(
                "SELECT stable FROM rollouts WHERE service = ?1 AND environment = ?2 AND verdict = 'promote' \
                 AND kind = 'deploy' ORDER BY id DESC LIMIT 1",
                params![target.service, target.environment],
                |r| r.get(0),
            )
            .optional()?;
        json.flatten()
            .map(|j| {
                serde_json::from_str(&j).map_err(|e| StoreError::Corrupt {
                    id: 0,
                    column: "stable",
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    /// The most recent build with this number deployed to the target (for `rollback --to`).
    pub fn find_build(&self, target: &Target, number: &str) -> Result<Option<Build>, StoreError> {
        let json: Option<String> = self
            .lock()
            .query_row(
                "SELECT candidate FROM rollouts WHERE service = ?1 AND environment = ?2 AND candidate_number = ?3 \
                 ORDER BY id DESC LIMIT 1",
                params![target.service, target.environment, number],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| StoreError::Corrupt {
                id: 0,
                column: "candidate",
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    fn read_rollout(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRollout> {
        Ok(RawRollout {
            id: row.get(0)?,
            service: row.get(1)?,
            environment: row.get(2)?,
            strategy: row.get(3)?,
            kind: row.get(4)?,
            stable: row.get(5)?,
            candidate: row.get(6)?,
            phase: row.get(7)?,
            active: row.get(8)?,
            verdict: row.get(9)?,
            reason: row.get(10)?,
            created_ms: row.get(11)?,
            updated_ms: row.get(12)?,
            traffic_at_ms: row.get(13)?,
            verdict_at_ms: row.get(14)?,
            finished_ms: row.get(15)?,
            evidence: row.get(16)?,
            requested_by: row.get(17)?,
        })
    }

    /// One rollout by id.
    pub fn rollout(&self, id: i64) -> Result<RolloutRecord, StoreError> {
        let raw = self
            .lock()
            .query_row(
                &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
                params![id],
                Self::read_rollout,
            )
            .optional()?
            .ok_or(StoreError::NotFound(id))?;
        raw.decode()
    }

    /// Rollouts, newest first, optionally for one target, at most `limit`.
    pub fn rollouts(
        &self,
        target: Option<&Target>,
        limit: usize,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        let conn = self.lock();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let raws: Vec<RawRollout> = match target {
            Some(t) => {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE service = ?1 AND environment = ?2 ORDER BY id DESC LIMIT ?3"
                ))?;
                stmt.query_map(params![t.service, t.environment, limit], Self::read_rollout)?
                    .collect::<Result<_, _>>()?
            }
            None => {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY id DESC LIMIT ?1"
                ))?;
                stmt.query_map(params![limit], Self::read_rollout)?
                    .collect::<Result<_, _>>()?
            }
        };
        drop(conn);
        raws.into_iter().map(RawRollout::decode).collect()
    }

    /// Rollouts not yet finished (what a restarted guard resumes), oldest first.
    pub fn active_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE active = 1 ORDER BY id"
        ))?;
        let raws: Vec<RawRollout> = stmt
            .query_map([], Self::read_rollout)?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        drop(conn);
        raws.into_iter().map(RawRollout::decode).collect()
    }

    /// Every step of a rollout, in order.
    pub fn steps(&self, id: i64) -> Result<Vec<StepRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, from_state, to_state, phase, cause, detail, evidence FROM steps \
             WHERE rollout_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(seq, at_ms, from, to, phase, cause, detail, evidence)| {
                Ok(StepRecord {
                    seq,
                    at_ms,
                    from,
                    to,
                    phase: serde_json::from_str(&phase).map_err(|e| StoreError::Corrupt {
                        id,
                        column: "steps.phase",
                        detail: e.to_string(),
                    })?,
                    cause,
                    detail,
                    evidence: evidence
                        .map(|e| serde_json::from_str(&e))
                        .transpose()
                        .map_err(|e| StoreError::Corrupt {
                            id,
                            column: "steps.evidence",
                            detail: e.to_string(),
                        })?,
                })
            })
            .collect()
    }

    /// Records a notification delivery reported by the dispatcher.
    pub fn record_delivery(&self, rollout_id: i64, d: &DeliveryRecord) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO deliveries(rollout_id, at_ms, notifier, event, ok, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![rollout_id, d.at_ms, d.notifier, d.event, d.ok, d.detail],
        )?;
        Ok(())
    }

    /// Keeps what a notifier created for a rollout (Grafana's open region,
    /// GitHub's deployment) for a restarted guard to finish with it, or
    /// forgets it with `None`.
    pub fn link_notifier(
        &self,
        rollout_id: i64,
        notifier: &str,
        created: Option<i64>,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        match created {
            Some(c) => conn.execute(
                "INSERT INTO notifier_links(rollout_id, notifier, created) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(rollout_id, notifier) DO UPDATE SET created = excluded.created",
                params![rollout_id, notifier, c],
            )?,
            None => conn.execute(
                "DELETE FROM notifier_links WHERE rollout_id = ?1 AND notifier = ?2",
                params![rollout_id, notifier],
            )?,
        };
        Ok(())
    }

    /// What [`Store::link_notifier`] kept.
    pub fn notifier_link(
        &self,
        rollout_id: i64,
        notifier: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT created FROM notifier_links WHERE rollout_id = ?1 AND notifier = ?2",
                params![rollout_id, notifier],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Deliveries recorded for a rollout, in order.
    pub fn deliveries(&self, rollout_id: i64) -> Result<Vec<DeliveryRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT at_ms, notifier, event, ok, detail FROM deliveries WHERE rollout_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt
            .query_map(params![rollout_id], |r| {
                Ok(DeliveryRecord {
                    at_ms: r.get(0)?,
                    notifier: r.get(1)?,
                    event: r.get(2)?,
                    ok: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

struct RawRollout {
    id: i64,
    service: String,
    environment: String,
    strategy: String,
    kind: String,
    stable: Option<String>,
    candidate: String,
    phase: String,
    active: bool,
    verdict: Option<String>,
    reason: Option<String>,
    created_ms: i64,
    updated_ms: i64,
    traffic_at_ms: Option<i64>,
    verdict_at_ms: Option<i64>,
    finished_ms: Option<i64>,
    evidence: Option<String>,
    requested_by: String,
}

impl RawRollout {
    fn decode(self) -> Result<RolloutRecord, StoreError> {
        let id = self.id;
        let corrupt = |column: &'static str| {
            move |e: serde_json::Error| StoreError::Corrupt {
                id,
                column,
                detail: e.to_string(),
            }
        };
        let strategy = match self.strategy.as_str() {
            "canary" => Strategy::Canary,
            "rolling" => Strategy::Rolling,
            other => {
                return Err(StoreError::Corrupt {
                    id,
                    column: "strategy",
                    detail: format!("unknown {other:?}"),
                });
            }
        };
        let kind = match self.kind.as_str() {
            "deploy" => RolloutKind::Deploy,
            "rollback" => RolloutKind::Rollback,
            other => {
                return Err(StoreError::Corrupt {
                    id,
                    column: "kind",
                    detail: format!("unknown {other:?}"),
                });
            }
        };
        Ok(RolloutRecord {
            id,
            target: Target {
                service: self.service,
                environment: self.environment,
            },
            strategy,
            kind,
            stable: self
                .stable
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(corrupt("stable"))?,
            candidate: serde_json::from_str(&self.candidate).map_err(corrupt("candidate"))?,
            phase: serde_json::from_str(&self.phase).map_err(corrupt("phase"))?,
            active: self.active,
            verdict: self.verdict,
            reason: self.reason,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            traffic_at_ms: self.traffic_at_ms,
            verdict_at_ms: self.verdict_at_ms,
            finished_ms: self.finished_ms,
            evidence: self
                .evidence
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(corrupt("evidence"))?,
            requested_by: self.requested_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(n: &str) -> Build {
        Build {
            number: n.into(),
            commit: None,
            image: None,
            command: vec!["x".into()],
            env: Default::default(),
        }
    }

    /// Records that `notifier` answered `event` ("<kind> (<action>)") at `at_ms`.
    fn answered(store: &Store, rollout_id: i64, at_ms: i64, notifier: &str, event: &str) {
        store
            .record_delivery(
                rollout_id,
                &DeliveryRecord {
                    at_ms,
                    notifier: notifier.into(),
                    event: event.into(),
                    ok: true,
                    detail: None,
                },
            )
            .expect("delivery");
    }

    /// A deploy of build 2 over build 1 to `s` in `e`.
    fn deploy(strategy: Strategy) -> NewRollout {
        NewRollout {
            target: Target {
                service: "s".into(),
                environment: "e".into(),
            },
            strategy,
            kind: RolloutKind::Deploy,
            stable: Some(build("1")),
            candidate: build("2"),
            phase: Phase::Pending,
            requested_by: "test".into(),
        }
    }

    #[test]
    fn one_process_holds_a_store_until_it_drops_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("guard.db");
        let first = Store::open_exclusive(&path).expect("first");
        match Store::open_exclusive(&path) {
            Err(StoreError::InUse { holder, .. }) => assert!(
                holder.contains(&format!("pid {}", std::process::id())),
                "{holder}"
            ),
            Err(e) => panic!("expected InUse, got {e}"),
            Ok(_) => panic!("a second open of a held store succeeded"),
        }
        // Readers that do not act (tests, tools) may still open it.
        Store::open(&path).expect("a plain open");
        drop(first);
        Store::open_exclusive(&path).expect("free again once dropped");
    }

    /// A directory that cannot be made is named (under a plain file, so the
    /// test holds for root too), not reported as a lock file not found.
    #[test]
    fn a_store_directory_that_cannot_be_made_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").expect("write");
        let path = file.join("var/guard.db");
        match Store::open_exclusive(&path) {
            Err(e @ StoreError::Directory { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("{}/var", file.display()))
                        && text.contains("set `store:` in guard.yaml"),
                    "{text}"
                );
            }
            Err(e) => panic!("expected Directory, got {e}"),
            Ok(_) => panic!("a store under a plain file opened"),
        }
    }

    #[test]
    fn one_active_rollout_per_target_and_steps_recorded() {
        let store = Store::in_memory().expect("store");
        let new = deploy(Strategy::Rolling);
        let id = store.create_rollout(&new, 1).expect("create");
        assert!(matches!(
            store.create_rollout(&new, 2),
            Err(StoreError::Busy { .. })
        ));
        let to = Phase::Shifting {
            step: 0,
            share: 0.5,
        };
        store
            .record_transition(&Transition {
                id,
                from: &Phase::Pending,
                to: &to,
                cause: "start",
                detail: None,
                evidence: None,
                at_ms: 3,
            })
            .expect("t1");
        let to2 = Phase::Verifying {
            step: 0,
            share: 0.5,
        };
        store
            .record_transition(&Transition {
                id,
                from: &to,
                to: &to2,
                cause: "acted",
                detail: None,
                evidence: None,
                at_ms: 4,
            })
            .expect("t2");
        let done = Phase::Reverted;
        store
            .record_transition(&Transition {
                id,
                from: &to2,
                to: &Phase::Reverting {
                    reason: "bad".into(),
                    cause: crate::engine::phase::RevertCause::Judge,
                },
                cause: "verdict",
                detail: Some("bad"),
                evidence: None,
                at_ms: 9,
            })
            .expect("t3");
        store
            .record_transition(&Transition {
                id,
                from: &to2,
                to: &done,
                cause: "acted",
                detail: None,
                evidence: None,
                at_ms: 10,
            })
            .expect("t4");
        let r = store.rollout(id).expect("read");
        assert!(!r.active);
        assert_eq!(r.verdict.as_deref(), Some("revert"));
        assert_eq!(r.traffic_at_ms, Some(4));
        assert_eq!(r.verdict_at_ms, Some(9));
        assert_eq!(r.seconds_to_verdict(), Some(0.005));
        assert_eq!(store.steps(id).expect("steps").len(), 5);
        // The target is free again.
        store.create_rollout(&new, 11).expect("second rollout");
        assert_eq!(store.active_rollouts().expect("active").len(), 1);
    }

    #[test]
    fn a_notifier_link_is_kept_replaced_and_forgotten() {
        let store = Store::in_memory().expect("store");
        assert_eq!(store.notifier_link(7, "grafana").expect("read"), None);
        store.link_notifier(7, "grafana", Some(11)).expect("keep");
        store.link_notifier(7, "github", Some(900)).expect("keep");
        store.link_notifier(8, "grafana", Some(12)).expect("keep");
        store
            .link_notifier(7, "grafana", Some(13))
            .expect("replace");
        assert_eq!(store.notifier_link(7, "grafana").expect("read"), Some(13));
        store.link_notifier(7, "grafana", None).expect("forget");
        assert_eq!(store.notifier_link(7, "grafana").expect("read"), None);
        assert_eq!(store.notifier_link(7, "github").expect("read"), Some(900));
        assert_eq!(store.notifier_link(8, "grafana").expect("read"), Some(12));
    }

    #[test]
    fn a_judge_checkpoint_is_replaced_while_active_and_dropped_when_finished() {
        let store = Store::in_memory().expect("store");
        let id = store
            .create_rollout(&deploy(Strategy::Canary), 1)
            .expect("create");
        assert_eq!(store.judge_checkpoint(id).expect("read"), None);
        store
            .save_judge_checkpoint(id, &serde_json::json!({"elapsed": 1.0}), 2)
            .expect("save");
        store
            .save_judge_checkpoint(id, &serde_json::json!({"elapsed": 2.5}), 3)
            .expect("replace");
        assert_eq!(
            store.judge_checkpoint(id).expect("read"),
            Some(serde_json::json!({"elapsed": 2.5}))
        );
        assert!(matches!(
            store.save_judge_checkpoint(id + 1, &serde_json::json!({}), 3),
            Err(StoreError::NotFound(_))
        ));
        store
            .record_transition(&Transition {
                id,
                from: &Phase::Pending,
                to: &Phase::Reverted,
                cause: "test",
                detail: None,
                evidence: None,
                at_ms: 4,
            })
            .expect("finish");
        assert_eq!(store.judge_checkpoint(id).expect("read"), None);
        assert!(
            matches!(
                store.save_judge_checkpoint(id, &serde_json::json!({}), 5),
                Err(StoreError::NotFound(_))
            ),
            "a finished rollout takes no checkpoint"
        );
    }

    #[test]
    fn a_notice_is_pending_until_each_configured_notifier_answered_it() {
        let store = Store::in_memory().expect("store");
        let id = store
            .create_rollout(&deploy(Strategy::Rolling), 1)
            .expect("create");
        let event = serde_json::json!({"kind": "reverted"});
        let sent_to = ["slack".to_string(), "webhook".to_string()];
        store
            .queue_notice(id, "reverted", &sent_to, &event, 100)
            .expect("queue");
        // Answers to other events, or from before this one was queued, do not count.
        answered(&store, id, 99, "slack", "reverted (message)");
        answered(&store, id, 101, "slack", "started (message)");
        answered(&store, id, 102, "webhook", "reverted (event)");
        let both = ["slack", "webhook", "teams"];
        assert_eq!(
            store.pending_notices(&both).expect("pending"),
            vec![PendingNotice {
                rollout_id: id,
                event: event.clone(),
                missing: vec!["slack".into()],
            }]
        );
        // Not yet answered by all: not forgotten, whatever its age.
        store
            .forget_answered_notices(&both, i64::MAX)
            .expect("sweep");
        assert_eq!(store.pending_notices(&both).expect("pending").len(), 1);
        // A notifier no longer configured cannot be sent to: nothing pending,
        // and the notice is forgotten.
        assert_eq!(
            store.pending_notices(&["webhook"]).expect("pending"),
            vec![]
        );
        assert_eq!(store.pending_notices(&both).expect("pending"), vec![]);
    }

    #[test]
    fn answered_notices_are_forgotten_once_old_enough() {
        let store = Store::in_memory().expect("store");
        let id = store
            .create_rollout(&deploy(Strategy::Rolling), 1)
            .expect("create");
        let sent_to = ["webhook".to_string()];
        for (kind, at) in [("started", 100), ("reverted", 200)] {
            store
                .queue_notice(id, kind, &sent_to, &serde_json::json!({"kind": kind}), at)
                .expect("queue");
            answered(&store, id, at + 1, "webhook", &format!("{kind} (event)"));
        }
        // Only what was queued before 150 is swept: the later one stays.
        store
            .forget_answered_notices(&["webhook"], 150)
            .expect("sweep");
        let left: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .expect("count");
        assert_eq!(left, 1);
        assert_eq!(
            store.pending_notices(&["webhook"]).expect("pending"),
            vec![]
        );
    }
}
