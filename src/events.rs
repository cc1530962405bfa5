//! The node's event bus: state changes (set statuses, cycles, restarts, promotions,
//! session logins and logouts, snapshots) as typed records, for `ctl events`.
//!
//! The composition root owns the [`Bus`] and hands each layer an [`Emitter`], which can
//! only send. Sending never waits: the bus is a bounded broadcast ring, so a reader
//! that falls behind loses the oldest events and is told how many
//! ([`EventKind::Lagged`]), while the I/O path and the replication tasks go on at their
//! own pace. With nobody subscribed an emit costs a counter read.
//!
//! This module sits at the bottom of the layers: events carry plain values (names,
//! numbers, state names as text), so every layer can emit them without this module
//! knowing any of theirs.

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it loses some.
pub const CAPACITY: usize = 1024;

/// One state change, stamped when it was emitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. On the wire `kind` names the variant in snake_case; the names and
/// fields are a stable interface for scripts (`ctl events --json`): fields may be
/// added, never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// First line of every stream: the subscription is in place, later events reach
    /// this reader.
    Subscribed,
    /// The reader fell behind and `missed` events were dropped for it.
    Lagged {
        missed: u64,
    },
    /// A replication set's status changed (`from` is absent for the first status a
    /// set reports after it starts).
    SetStatus {
        set: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        to: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A cycle has its cut (a new one, or one a failed attempt left to resume) and
    /// starts shipping it.
    CycleStarted {
        set: String,
        cut: u64,
        full: bool,
        resumed: bool,
        /// Bytes of pages the cut covers (holes of a full cycle excluded).
        bytes_total: u64,
    },
    /// The peer committed a cut: what the whole cycle shipped, over all its attempts.
    CycleCommitted {
        set: String,
        cut: u64,
        full: bool,
        data_bytes: u64,
        wire_data_bytes: u64,
        record_bytes: u64,
        zero_bytes: u64,
        seconds: f64,
        attempts: u32,
    },
    /// An attempt failed; the cut (when one was taken) is kept for the retry.
    CycleFailed {
        set: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cut: Option<u64>,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_secs: Option<u64>,
        seconds: f64,
    },
    /// A cycle was given up (`abort`, `suspend`, `restart`, shutdown): its pages go
    /// back into the dirty maps.
    CycleAbandoned {
        set: String,
        reason: String,
    },
    /// `restart --yes`: the secondary's recovery points go, a new generation follows.
    Restart {
        set: String,
    },
    /// A secondary volume or group became writable (`promote`).
    Promoted {
        set: String,
        volumes: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovery_point: Option<u64>,
    },
    /// An iSCSI login completed.
    SessionLogin {
        initiator: String,
        target: String,
        tsih: u16,
        isid: String,
        address: String,
        discovery: bool,
    },
    /// An iSCSI session ended (logout, closed connection, reinstatement, shutdown).
    SessionLogout {
        initiator: String,
        target: String,
        tsih: u16,
    },
    /// A login was refused: no such target, not in the ACL, CHAP failed, ...
    LoginRefused {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initiator: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        address: String,
        reason: String,
        status_class: u8,
        status_detail: u8,
    },
    SnapshotCreated {
        name: String,
        volumes: Vec<String>,
        cut: u64,
    },
    SnapshotDeleted {
        name: String,
    },
}

impl EventKind {
    /// The `kind` field's value.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Subscribed => "subscribed",
            EventKind::Lagged { .. } => "lagged",
            EventKind::SetStatus { .. } => "set_status",
            EventKind::CycleStarted { .. } => "cycle_started",
            EventKind::CycleCommitted { .. } => "cycle_committed",
            EventKind::CycleFailed { .. } => "cycle_failed",
            EventKind::CycleAbandoned { .. } => "cycle_abandoned",
            EventKind::Restart { .. } => "restart",
            EventKind::Promoted { .. } => "promoted",
            EventKind::SessionLogin { .. } => "session_login",
            EventKind::SessionLogout { .. } => "session_logout",
            EventKind::LoginRefused { .. } => "login_refused",
            EventKind::SnapshotCreated { .. } => "snapshot_created",
            EventKind::SnapshotDeleted { .. } => "snapshot_deleted",
        }
    }
}

impl Event {
    /// Stamps `kind` with the current time.
    pub fn now(kind: EventKind) -> Event {
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Event { at_unix_ms, kind }
    }

    /// One line for a person: time, kind, subject, then the details as `key=value`.
    pub fn human(&self) -> String {
        let secs = self.at_unix_ms / 1000;
        let t = crate::time::rfc3339_utc(secs);
        // 2026-12-03T04:05:06.789Z: events of one second stay apart.
        let t = format!("{}.{:03}Z", &t[..t.len() - 1], self.at_unix_ms % 1000);
        let mut details: Vec<String> = Vec::new();
        let mut kv = |k: &str, v: String| details.push(format!("{k}={v}"));
        let subject = match &self.kind {
            EventKind::Subscribed => "-".to_string(),
            EventKind::Lagged { missed } => {
                kv("missed", missed.to_string());
                "-".to_string()
            }
            EventKind::SetStatus {
                set,
                from,
                to,
                error,
            } => {
                kv("from", from.clone().unwrap_or_else(|| "-".into()));
                kv("to", to.clone());
                if let Some(e) = error {
                    kv("error", quote(e));
                }
                set.clone()
            }
            EventKind::CycleStarted {
                set,
                cut,
                full,
                resumed,
                bytes_total,
            } => {
                kv("cut", cut.to_string());
                kv("full", full.to_string());
                kv("resumed", resumed.to_string());
                kv("bytes_total", bytes_total.to_string());
                set.clone()
            }
            EventKind::CycleCommitted {
                set,
                cut,
                full,
                data_bytes,
                wire_data_bytes,
                record_bytes,
                zero_bytes,
                seconds,
                attempts,
            } => {
                kv("cut", cut.to_string());
                kv("full", full.to_string());
                kv("data_bytes", data_bytes.to_string());
                kv("wire_data_bytes", wire_data_bytes.to_string());
                kv("record_bytes", record_bytes.to_string());
                kv("zero_bytes", zero_bytes.to_string());
                kv("seconds", format!("{seconds:.3}"));
                kv("attempts", attempts.to_string());
                set.clone()
            }
            EventKind::CycleFailed {
                set,
                cut,
                error,
                retry_in_secs,
                seconds,
            } => {
                if let Some(c) = cut {
                    kv("cut", c.to_string());
                }
                kv("seconds", format!("{seconds:.3}"));
                if let Some(r) = retry_in_secs {
                    kv("retry_in_secs", r.to_string());
                }
                kv("error", quote(error));
                set.clone()
            }
            EventKind::CycleAbandoned { set, reason } => {
                kv("reason", quote(reason));
                set.clone()
            }
            EventKind::Restart { set } => set.clone(),
            EventKind::Promoted {
                set,
                volumes,
                recovery_point,
            } => {
                kv("volumes", volumes.join(","));
                if let Some(p) = recovery_point {
                    kv("recovery_point", p.to_string());
                }
                set.clone()
            }
            EventKind::SessionLogin {
                initiator,
                target,
                tsih,
                isid,
                address,
                discovery,
            } => {
                kv(
                    "target",
                    if target.is_empty() {
                        "-".into()
                    } else {
                        target.clone()
                    },
                );
                kv("tsih", tsih.to_string());
                kv("isid", isid.clone());
                kv("address", address.clone());
                if *discovery {
                    kv("discovery", "true".into());
                }
                initiator.clone()
            }
            EventKind::SessionLogout {
                initiator,
                target,
                tsih,
            } => {
                kv(
                    "target",
                    if target.is_empty() {
                        "-".into()
                    } else {
                        target.clone()
                    },
                );
                kv("tsih", tsih.to_string());
                initiator.clone()
            }
            EventKind::LoginRefused {
                initiator,
                target,
                address,
                reason,
                status_class,
                status_detail,
            } => {
                kv("target", target.clone().unwrap_or_else(|| "-".into()));
                kv("address", address.clone());
                kv("status", format!("{status_class:02x}/{status_detail:02x}"));
                kv("reason", quote(reason));
                initiator.clone().unwrap_or_else(|| "-".into())
            }
            EventKind::SnapshotCreated { name, volumes, cut } => {
                kv("volumes", volumes.join(","));
                kv("cut", cut.to_string());
                name.clone()
            }
            EventKind::SnapshotDeleted { name } => name.clone(),
        };
        let mut line = format!("{t} {} {subject}", self.kind.name());
        for d in details {
            line.push(' ');
            line.push_str(&d);
        }
        line
    }
}

/// A free-text value in a `key=value` line: quoted, so a reader splits on spaces safely.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"?\"".into())
}

/// The bus: owned by the composition root, which hands out emitters and subscriptions.
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Default for Bus {
    fn default() -> Bus {
        Bus::new(CAPACITY)
    }
}

impl Bus {
    /// A bus keeping at most `capacity` events for a reader that falls behind.
    pub fn new(capacity: usize) -> Bus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Bus { tx }
    }

    /// A handle that can only send, for a layer.
    pub fn emitter(&self) -> Emitter {
        Emitter {
            tx: Some(self.tx.clone()),
        }
    }

    /// A new reader: it sees every event emitted from now on, first [`EventKind::Subscribed`].
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
            greeted: false,
        }
    }
}

/// Sends events; never waits. Cheap to clone.
#[derive(Clone, Default)]
pub struct Emitter {
    tx: Option<broadcast::Sender<Event>>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Emitter")
    }
}

impl Emitter {
    /// An emitter connected to nothing (unit tests, tools).
    pub fn none() -> Emitter {
        Emitter { tx: None }
    }

    /// Sends the event made by `make` to every subscriber; `make` runs only when
    /// someone listens, so an unread bus costs no allocation.
    pub fn emit_with(&self, make: impl FnOnce() -> EventKind) {
        if let Some(tx) = &self.tx {
            if tx.receiver_count() > 0 {
                // Err only when the last reader left meanwhile: nobody to tell.
                let _ = tx.send(Event::now(make()));
            }
        }
    }

    /// Sends `kind` to every subscriber.
    pub fn emit(&self, kind: EventKind) {
        self.emit_with(|| kind);
    }
}

/// One reader's view of the bus.
pub struct Subscription {
    rx: broadcast::Receiver<Event>,
    greeted: bool,
}

impl Subscription {
    /// The next event: [`EventKind::Subscribed`] first, [`EventKind::Lagged`] when
    /// events were dropped for this reader, `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Event> {
        if !self.greeted {
            self.greeted = true;
            return Some(Event::now(EventKind::Subscribed));
        }
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(Event::now(EventKind::Lagged { missed }))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_reader_is_told_how_many_it_lost_and_emitters_never_wait() {
        let bus = Bus::new(4);
        let emit = bus.emitter();
        let mut sub = bus.subscribe();
        assert_eq!(sub.next().await.unwrap().kind, EventKind::Subscribed);
        for i in 0..10 {
            emit.emit(EventKind::Restart {
                set: format!("s{i}"),
            });
        }
        assert_eq!(
            sub.next().await.unwrap().kind,
            EventKind::Lagged { missed: 6 }
        );
        for i in 6..10 {
            assert_eq!(
                sub.next().await.unwrap().kind,
                EventKind::Restart {
                    set: format!("s{i}")
                }
            );
        }
        drop(bus);
        drop(emit);
        assert!(sub.next().await.is_none());
    }

    #[test]
    fn without_readers_the_event_is_never_made() {
        let bus = Bus::new(4);
        bus.emitter().emit_with(|| unreachable!("nobody listens"));
        Emitter::none().emit_with(|| unreachable!("connected to nothing"));
    }

    #[test]
    fn json_has_a_stable_kind_and_round_trips() {
        let e = Event {
            at_unix_ms: 1_700_000_000_123,
            kind: EventKind::CycleFailed {
                set: "r".into(),
                cut: Some(7),
                error: "talking to peer: connection reset".into(),
                retry_in_secs: Some(2),
                seconds: 0.5,
            },
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "cycle_failed");
        assert_eq!(json["cut"], 7);
        assert_eq!(json["at_unix_ms"], 1_700_000_000_123u64);
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
        let line = e.human();
        assert!(
            line.starts_with("2023-11-14T22:13:20.123Z cycle_failed r cut=7 "),
            "{line}"
        );
        assert!(
            line.ends_with("error=\"talking to peer: connection reset\""),
            "{line}"
        );
    }
}
