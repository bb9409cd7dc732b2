//! One overview per tick, whatever the number of consoles open: a single task builds and
//! serialises it every [`super::PUSH_EVERY`] and hands the same bytes to every open event
//! stream (a `watch` channel: a stream that falls behind skips to the newest, never queues).
//! The task runs only while at least one stream is open, so a host with no console open
//! builds nothing. `GET /console/api/overview` takes the last one while it is under a tick
//! old.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// An overview as JSON, and when it was built.
#[derive(Debug, Clone)]
pub struct Built {
    pub at: Instant,
    pub json: Arc<str>,
}

/// The shared overview and the task that keeps it fresh while someone watches.
#[derive(Debug)]
pub struct Pusher {
    every: Duration,
    latest: watch::Sender<Option<Built>>,
    /// Whether the task runs. Changed under this lock only, and a stream subscribes under
    /// it: the task cannot end just as a stream arrives and leave it without overviews.
    running: Mutex<bool>,
}

impl Pusher {
    pub fn new(every: Duration) -> Self {
        Pusher {
            every,
            latest: watch::Sender::new(None),
            running: Mutex::new(false),
        }
    }

    /// The last overview, when it is under a tick old.
    pub fn fresh(&self) -> Option<Arc<str>> {
        self.latest
            .borrow()
            .as_ref()
            .filter(|b| b.at.elapsed() < self.every)
            .map(|b| b.json.clone())
    }

    /// Keeps an overview built for a `GET`, without waking the streams (they get the next
    /// tick's, as before).
    pub fn keep(&self, json: Arc<str>) {
        self.latest.send_if_modified(|latest| {
            *latest = Some(Built {
                at: Instant::now(),
                json,
            });
            false
        });
    }

    /// Forgets the last overview: an action changed what it would say.
    pub fn forget(&self) {
        self.latest.send_if_modified(|latest| {
            *latest = None;
            false
        });
    }

    /// A stream of overviews: the last one at once if it is fresh, then one a tick. Starts
    /// the task (which calls `build`: `None` ends it) unless it runs.
    pub fn subscribe(
        self: &Arc<Self>,
        build: impl Fn() -> Option<Arc<str>> + Send + 'static,
    ) -> watch::Receiver<Option<Built>> {
        let mut running = lock(&self.running);
        let mut stream = self.latest.subscribe();
        if *running {
            if stream.borrow().is_some() {
                stream.mark_changed();
            }
        } else {
            *running = true;
            tokio::spawn(self.clone().run(build));
        }
        stream
    }

    async fn run(self: Arc<Self>, build: impl Fn() -> Option<Arc<str>> + Send + 'static) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            {
                let mut running = lock(&self.running);
                if self.latest.receiver_count() == 0 {
                    *running = false;
                    return;
                }
            }
            let Some(json) = build() else {
                *lock(&self.running) = false;
                return;
            };
            self.latest.send_replace(Some(Built {
                at: Instant::now(),
                json,
            }));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
