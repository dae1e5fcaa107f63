//! Time and chance, injectable: the credential reads the monotonic clock, the wall
//! clock and random draws only through these traits, so its whole lifecycle can be
//! tested with `tokio::time::pause` and a seeded generator.

use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The clocks a credential reads.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time: when tokens stop being usable, when to refresh, backoff.
    fn now(&self) -> Instant;
    /// Wall-clock time: token expiry as IntelePeer and other replicas see it.
    fn wall(&self) -> SystemTime;
}

/// Uniform draws in `[0, 1)` for jitter.
pub trait Random: Send + Sync + fmt::Debug {
    fn unit(&self) -> f64;
}

/// The real clocks. `now` is tokio's `Instant`, so paused time applies to it.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The thread-local generator of `rand`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRandom;

impl Random for ThreadRandom {
    fn unit(&self) -> f64 {
        rand::random()
    }
}

/// A wall clock that moves with tokio's (possibly paused) clock from a fixed start,
/// for tests: `wall()` is `start_wall + (now - start)`.
#[derive(Debug, Clone, Copy)]
pub struct FollowingClock {
    start: Instant,
    start_wall: SystemTime,
}

impl FollowingClock {
    /// A clock whose wall time starts at `start_wall` now.
    pub fn starting_at(start_wall: SystemTime) -> Self {
        Self {
            start: Instant::now(),
            start_wall,
        }
    }
}

impl Clock for FollowingClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        self.start_wall + self.start.elapsed()
    }
}

/// A seeded generator, for repeatable jitter in tests.
#[derive(Debug)]
pub struct SeededRandom(Mutex<rand::rngs::StdRng>);

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }
}

impl Random for SeededRandom {
    fn unit(&self) -> f64 {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .random()
    }
}
