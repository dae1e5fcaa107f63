//! A shared store's health: up, degraded (it answers but refuses some commands), or
//! unreachable, and the transitions between them.
//!
//! Each transition is logged once and counted; nothing in between is. A store that
//! answers reads but refuses writes (`OOM` at `maxmemory` with `noeviction`,
//! `READONLY` on a replica, `NOPERM`) is *degraded*, not flapping between up and
//! down: a successful read does not end it, only a successful write does, and the
//! writes that test for its end are spaced with capped exponential backoff and
//! jitter ([`write_probe_delay`]). Before this, a read marked the store up and
//! started a resync, whose refused write marked it down again, thousands of times a
//! second.
//!
//! Must not: log a URL, a key or a value (the causes come from the backend, which
//! names none).

use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

use crate::telemetry;

/// The first delay before a degraded store's writes are tried again.
const WRITE_PROBE_BASE: Duration = Duration::from_secs(2);

/// The longest delay between two write probes of a degraded store: its end is seen
/// within about a minute.
const WRITE_PROBE_CAP: Duration = Duration::from_secs(60);

/// How a backend operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer: connection refused or dropped, a timeout.
    Unreachable,
    /// The store answered with an error (`OOM`, `READONLY`, `NOPERM`, …): it is there
    /// but will not do this.
    Refused,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Refused => "degraded",
        }
    }
}

/// Where a shared store stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    Up,
    /// Answers, but refused a command: used for reads, not for writes.
    Degraded,
    Unreachable,
}

/// What changed with one operation's outcome; the store acts on it after the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    None,
    /// Reachable again after an outage, or accepting writes again: credentials
    /// converge on the fleet's token.
    Recovered,
}

/// The health of one shared store.
#[derive(Debug)]
pub(super) struct StoreHealth {
    kind: &'static str,
    /// Whether metrics and logs speak of it (a store only this process uses is never
    /// shown).
    shown: bool,
    state: StoreState,
    pub last_error: Option<String>,
    /// Write probes of a degraded store that failed in a row.
    failed_write_probes: u32,
    /// When a degraded store's writes are next tried.
    next_write_probe: Option<Instant>,
}

impl StoreHealth {
    pub(super) fn new(kind: &'static str, shown: bool) -> Self {
        Self {
            kind,
            shown,
            state: StoreState::Up,
            last_error: None,
            failed_write_probes: 0,
            next_write_probe: None,
        }
    }

    pub(super) fn state(&self) -> StoreState {
        self.state
    }

    /// Whether a write may be sent now: the store is up, or degraded and a write probe
    /// is due (the caller's write is the probe).
    pub(super) fn write_allowed(&self, now: Instant) -> bool {
        match self.state {
            StoreState::Up => true,
            StoreState::Degraded => self.write_probe_due(now),
            StoreState::Unreachable => false,
        }
    }

    /// Whether a degraded store's next write probe is due.
    pub(super) fn write_probe_due(&self, now: Instant) -> bool {
        self.state == StoreState::Degraded && self.next_write_probe.is_none_or(|at| now >= at)
    }

    /// Records one operation's outcome; `write` when it was a write. `unit` is a draw
    /// in [0, 1) for the jitter of the next write probe.
    pub(super) fn note(
        &mut self,
        write: bool,
        failure: Option<(Failure, String)>,
        now: Instant,
        unit: f64,
    ) -> Change {
        match (self.state, failure) {
            (_, Some((Failure::Unreachable, why))) => {
                if self.state != StoreState::Unreachable {
                    self.log_trouble(Failure::Unreachable, &why);
                    self.state = StoreState::Unreachable;
                    self.show();
                }
                self.last_error = Some(why);
                Change::None
            }
            (StoreState::Degraded, Some((Failure::Refused, why))) => {
                if write {
                    self.failed_write_probes = self.failed_write_probes.saturating_add(1);
                    self.schedule_write_probe(now, unit);
                }
                self.last_error = Some(why);
                Change::None
            }
            (_, Some((Failure::Refused, why))) => {
                // It answered: if it was unreachable, that outage is over, and this is
                // a new kind of trouble.
                if self.state == StoreState::Unreachable {
                    self.log_recovered("token store reachable again");
                }
                self.log_trouble(Failure::Refused, &why);
                self.state = StoreState::Degraded;
                self.failed_write_probes = 1;
                self.schedule_write_probe(now, unit);
                self.last_error = Some(why);
                self.show();
                Change::None
            }
            (StoreState::Unreachable, None) => {
                self.log_recovered("token store reachable again: converging on the shared token");
                self.state = StoreState::Up;
                self.show();
                Change::Recovered
            }
            (StoreState::Degraded, None) if write => {
                self.log_recovered(
                    "token store accepts writes again: converging on the shared token",
                );
                self.state = StoreState::Up;
                self.failed_write_probes = 0;
                self.next_write_probe = None;
                self.show();
                Change::Recovered
            }
            (_, None) => Change::None,
        }
    }

    fn schedule_write_probe(&mut self, now: Instant, unit: f64) {
        self.next_write_probe = Some(now + write_probe_delay(self.failed_write_probes, unit));
    }

    fn show(&self) {
        if self.shown {
            telemetry::store_state(
                self.state != StoreState::Unreachable,
                self.state == StoreState::Degraded,
            );
        }
    }

    fn log_trouble(&self, failure: Failure, why: &str) {
        if !self.shown {
            return;
        }
        telemetry::store_trouble(failure.as_str());
        match failure {
            Failure::Unreachable => tracing::warn!(
                store = self.kind,
                cause = %why,
                "token store unreachable: this replica carries on alone"
            ),
            Failure::Refused => tracing::warn!(
                store = self.kind,
                cause = %why,
                "token store degraded: it answers but refuses commands; \
                 reads go on, writes are tried again with backoff"
            ),
        }
    }

    fn log_recovered(&self, message: &'static str) {
        if self.shown {
            tracing::info!(store = self.kind, "{message}");
        }
    }
}

/// The delay before the next write probe after `failures` failed ones: doubling from
/// `WRITE_PROBE_BASE`, capped at `WRITE_PROBE_CAP`, the upper half of it drawn by
/// `unit` (in [0, 1)) so that replicas do not probe in step.
pub(super) fn write_probe_delay(failures: u32, unit: f64) -> Duration {
    let doubled = WRITE_PROBE_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let ceiling = doubled.min(WRITE_PROBE_CAP);
    ceiling.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Option<(Failure, String)> {
        Some((Failure::Refused, "OOM command not allowed".to_owned()))
    }

    fn unreachable() -> Option<(Failure, String)> {
        Some((Failure::Unreachable, "connection refused".to_owned()))
    }

    #[test]
    fn write_probe_delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        assert_eq!(write_probe_delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(write_probe_delay(1, 1.0), Duration::from_secs(2));
        assert_eq!(write_probe_delay(2, 1.0), Duration::from_secs(4));
        assert_eq!(write_probe_delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(write_probe_delay(6, 1.0), Duration::from_secs(60));
        assert_eq!(write_probe_delay(u32::MAX, 1.0), Duration::from_secs(60));
        assert_eq!(write_probe_delay(u32::MAX, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn a_refused_command_degrades_and_only_a_write_ends_it() {
        let now = Instant::now();
        let mut health = StoreHealth::new("redis", false);
        assert_eq!(health.note(true, refused(), now, 1.0), Change::None);
        assert_eq!(health.state(), StoreState::Degraded);
        // Reads keep succeeding: still degraded, nothing to converge on.
        for _ in 0..1000 {
            assert_eq!(health.note(false, None, now, 1.0), Change::None);
        }
        assert_eq!(health.state(), StoreState::Degraded);
        assert_eq!(health.note(true, None, now, 1.0), Change::Recovered);
        assert_eq!(health.state(), StoreState::Up);
    }

    #[test]
    fn a_degraded_store_allows_a_write_only_when_its_probe_is_due() {
        let now = Instant::now();
        let mut health = StoreHealth::new("redis", false);
        assert!(health.write_allowed(now));
        health.note(true, refused(), now, 1.0);
        assert!(!health.write_allowed(now));
        assert!(!health.write_allowed(now + Duration::from_millis(1999)));
        assert!(health.write_allowed(now + Duration::from_secs(2)));
        // The probe failed: the next one is twice as far.
        let probed = now + Duration::from_secs(2);
        health.note(true, refused(), probed, 1.0);
        assert!(!health.write_allowed(probed + Duration::from_millis(3999)));
        assert!(health.write_allowed(probed + Duration::from_secs(4)));
        // A refused read does not push the probe back.
        health.note(false, refused(), probed, 1.0);
        assert!(health.write_allowed(probed + Duration::from_secs(4)));
    }

    #[test]
    fn an_outage_ends_on_any_answer_and_asks_for_convergence() {
        let now = Instant::now();
        let mut health = StoreHealth::new("redis", false);
        assert_eq!(health.note(false, unreachable(), now, 0.5), Change::None);
        assert_eq!(health.state(), StoreState::Unreachable);
        assert!(!health.write_allowed(now));
        assert_eq!(health.note(false, unreachable(), now, 0.5), Change::None);
        assert_eq!(health.note(false, None, now, 0.5), Change::Recovered);
        assert_eq!(health.state(), StoreState::Up);
        assert_eq!(health.note(false, None, now, 0.5), Change::None);
    }

    #[test]
    fn a_refusal_after_an_outage_is_degraded_not_recovered() {
        let now = Instant::now();
        let mut health = StoreHealth::new("redis", false);
        health.note(false, unreachable(), now, 0.5);
        assert_eq!(health.note(true, refused(), now, 0.5), Change::None);
        assert_eq!(health.state(), StoreState::Degraded);
        assert_eq!(
            health.last_error.as_deref(),
            Some("OOM command not allowed")
        );
        // Unreachable again while degraded: an outage.
        health.note(false, unreachable(), now, 0.5);
        assert_eq!(health.state(), StoreState::Unreachable);
    }
}
