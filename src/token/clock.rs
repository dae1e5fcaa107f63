//! Time and chance, injectable: the credential reads the monotonic clock, the wall
//! clock and random draws only through these traits, so its whole lifecycle can be
//! tested with `tokio::time::pause` and a seeded generator.

use std::fmt;
use std::time::SystemTime;

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

/// Test clocks and chance: compiled into tests only.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use rand::{Rng, SeedableRng};
    use tokio::time::Instant;

    use super::{Clock, Random};

    /// A wall clock that moves with tokio's (possibly paused) clock from a fixed start,
    /// for tests: `wall()` is `start_wall + (now - start)`.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct FollowingClock {
        start: Instant,
        start_wall: SystemTime,
    }

    impl FollowingClock {
        /// A clock whose wall time starts at `start_wall` now.
        pub(crate) fn starting_at(start_wall: SystemTime) -> Self {
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
    pub(crate) struct SeededRandom(Mutex<rand::rngs::StdRng>);

    impl SeededRandom {
        pub(crate) fn new(seed: u64) -> Self {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::testing::{FollowingClock, SeededRandom};
    use super::*;

    /// `count` draws of `random`, each checked to lie in `[0, 1)`.
    fn draws(random: &dyn Random, count: usize) -> Vec<f64> {
        let draws: Vec<f64> = (0..count).map(|_| random.unit()).collect();
        for draw in &draws {
            assert!((0.0..1.0).contains(draw), "{draw} is outside [0, 1)");
        }
        draws
    }

    #[test]
    fn the_thread_generator_draws_vary_within_the_unit_interval() {
        let draws = draws(&ThreadRandom, 100);
        // 100 equal draws from a real generator: a chance of 2^-5000 or so.
        assert!(draws.iter().any(|draw| *draw != draws[0]), "{draws:?}");
    }

    #[test]
    fn a_seeded_generator_repeats_its_varied_draws() {
        let first = draws(&SeededRandom::new(7), 100);
        assert_eq!(first, draws(&SeededRandom::new(7), 100));
        assert!(first.iter().any(|draw| *draw != first[0]), "{first:?}");
        assert_ne!(first, draws(&SeededRandom::new(8), 100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_following_clock_moves_with_tokios_clock() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = FollowingClock::starting_at(start);
        assert_eq!(clock.wall(), start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.wall(), start + Duration::from_secs(90));
        assert_eq!(clock.now(), Instant::now());
    }
}
