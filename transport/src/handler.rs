//! A subscriber driven by a handler closure on a background task.

use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::pattern::Subscriber;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Stops a [`spawn_handler`] task and waits for it. Dropping it instead
/// detaches the task: it runs until its subscription ends.
#[derive(Debug)]
#[must_use = "dropping the handle detaches the task; keep it to stop the task"]
pub struct HandlerTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HandlerTask {
    /// Asks the task to stop after the message it is handling (if any),
    /// and waits until it did (its `on_exit` has run).
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| Error::Io {
            what: "joining the handler task".into(),
            source: std::io::Error::other(e),
        })
    }

    /// Whether the task has ended (stopped, or its subscriber ended).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Runs `handler` on every message `sub` receives, on a tokio task, until
/// [`HandlerTask::stop`] or the subscription ends (dropping the
/// [`HandlerTask`] detaches the task, it does not stop it); then calls `on_exit`
/// with how it ended: `Ok(())` when stopped or closed cleanly, the error
/// otherwise (a dead publisher, a corrupt record). Must be called inside a
/// tokio runtime.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use shoal_transport::{handler::spawn_handler, Address, InProc, Options, Publisher, Wire};
/// let a: Address = "inproc://doc-handler".parse()?;
/// let o = Options::default();
/// let mut p = InProc::bind_publisher(&a, &o).await?;
/// let s = InProc::connect_subscriber(&a, &o).await?;
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let task = spawn_handler(s, move |f| { let _ = tx.send(f.to_vec()); }, |_| {});
/// p.wait_for_subscribers(1, std::time::Duration::from_secs(1)).await?;
/// p.send(b"", b"hi").await?;
/// assert_eq!(rx.recv().await.unwrap(), b"hi");
/// task.stop().await?;
/// # Ok::<(), shoal_transport::Error>(())
/// # }).unwrap();
/// ```
pub fn spawn_handler<S, H, X>(mut sub: S, mut handler: H, on_exit: X) -> HandlerTask
where
    S: Subscriber + 'static,
    H: FnMut(&Frame<'_>) + Send + 'static,
    X: FnOnce(Result<()>) + Send + 'static,
{
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        // Set once the handle is dropped: nobody can stop the task then.
        let mut detached = false;
        let end = loop {
            tokio::select! {
                // Receiving is cancel-safe: a stop takes nothing.
                r = sub.recv() => match r {
                    Ok(f) => handler(&f),
                    Err(Error::Closed) => break Ok(()),
                    Err(e) => break Err(e),
                },
                c = stopped.changed(), if !detached => {
                    if c.is_err() {
                        detached = true;
                    } else if *stopped.borrow() {
                        break Ok(());
                    }
                }
            }
        };
        on_exit(end);
    });
    HandlerTask { stop, task }
}
