//! Background tasks owned by a guard: the refresh loops, the file watchers and the
//! metrics upkeep live exactly as long as the server that started them.

use std::future::Future;

use tokio::task::JoinHandle;

/// A background task that is stopped when this guard is dropped.
#[derive(Debug)]
pub struct BackgroundTask(JoinHandle<()>);

impl BackgroundTask {
    /// Spawns `task` on the current runtime.
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
