//! The sink's own thread: [`crate::run`] hands it events and asks it to flush or roll back;
//! the sink's blocking work (writing, encoding, fsync) happens there, never on the async
//! runtime.

use tokio::sync::{mpsc, oneshot};
use wal2arrow_consumer::Event;

use crate::Sink;
use crate::error::{Error, Result};

/// Events waiting for the sink at most: what bounds memory when the sink is slower than the
/// stream.
const QUEUED_JOBS: usize = 16;

enum Job {
    Write(Event),
    WantsFlush(oneshot::Sender<bool>),
    /// `None`: a write failed earlier (its error went to [`Worker::failure`]); nothing was
    /// flushed.
    Flush(oneshot::Sender<Option<Result<()>>>),
    Rollback(oneshot::Sender<Result<bool>>),
}

/// The handle [`crate::run`] drives the sink's thread with.
pub(crate) struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    /// The first write that failed (writes are not waited for one by one).
    failed: Option<oneshot::Receiver<Error>>,
    /// Completes once the thread has dropped the sink.
    done: oneshot::Receiver<()>,
}

/// The sink's thread ended without answering: it panicked (the panic message was printed).
fn gone() -> Error {
    Error::Panicked("the sink".into())
}

impl Worker {
    /// Moves `sink` to a new thread.
    pub(crate) fn start<S: Sink + 'static>(mut sink: S) -> Result<Worker> {
        let (jobs, mut rx) = mpsc::channel::<Job>(QUEUED_JOBS);
        let (failed_tx, failed) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("wal2arrow-sink".into())
            .spawn(move || {
                let mut failed_tx = Some(failed_tx);
                // After a failed write the sink takes no more writes (and no flush: what it
                // holds has a gap), but may still roll back.
                let mut broken = false;
                while let Some(job) = rx.blocking_recv() {
                    match job {
                        Job::Write(event) if !broken => {
                            if let Err(e) = sink.write(&event) {
                                broken = true;
                                if let Some(tx) = failed_tx.take() {
                                    let _ = tx.send(e);
                                }
                            }
                        }
                        Job::Write(_) => {}
                        Job::WantsFlush(reply) => {
                            let _ = reply.send(!broken && sink.wants_flush());
                        }
                        Job::Flush(reply) => {
                            let _ = reply.send((!broken).then(|| sink.flush()));
                        }
                        Job::Rollback(reply) => {
                            let _ = reply.send(sink.rollback());
                        }
                    }
                }
                drop(sink);
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::sink("-", "cannot start a thread for the sink writing to", e))?;
        Ok(Worker { jobs: Some(jobs), failed: Some(failed), done })
    }

    async fn send(&self, job: Job) -> Result<()> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).await.map_err(|_| gone()),
            None => Err(gone()),
        }
    }

    /// Queues `event` for the sink (waiting while the queue is full). A failure shows later,
    /// through [`Worker::failure`], a flush or a rollback.
    pub(crate) async fn write(&self, event: Event) -> Result<()> {
        self.send(Job::Write(event)).await
    }

    /// Whether the sink wants to flush now.
    pub(crate) async fn wants_flush(&self) -> Result<bool> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::WantsFlush(tx)).await?;
        rx.await.map_err(|_| gone())
    }

    /// Makes everything written so far durable (after the queued writes); after a failed
    /// write, that write's error.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Flush(tx)).await?;
        match rx.await.map_err(|_| gone())? {
            Some(flushed) => flushed,
            None => Err(self.failure_now().await),
        }
    }

    /// Takes back what was written since the last flush, if the sink can.
    pub(crate) async fn rollback(&self) -> Result<bool> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Rollback(tx)).await?;
        rx.await.map_err(|_| gone())?
    }

    /// Completes with the first write that failed; never, if none does. Cancel safe.
    pub(crate) async fn failure(&mut self) -> Error {
        let Some(failed) = self.failed.as_mut() else {
            return std::future::pending().await;
        };
        let e = failed.await.unwrap_or_else(|_| gone());
        self.failed = None;
        e
    }

    /// The failed write's error, which the thread reported before it answered anything after
    /// it.
    async fn failure_now(&mut self) -> Error {
        match self.failed.take() {
            Some(failed) => failed.await.unwrap_or_else(|_| gone()),
            // Taken already: the caller has returned that error.
            None => Error::Config("the sink failed earlier: nothing more is written".into()),
        }
    }

    /// Lets the thread finish the queued work and drop the sink, and waits for it; the first
    /// write that failed, if nobody took its error yet.
    pub(crate) async fn finish(mut self) -> Option<Error> {
        self.jobs = None;
        let _ = (&mut self.done).await;
        self.failed.and_then(|mut failed| failed.try_recv().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every write; counts flushes and rollbacks.
    struct Failing {
        flushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Sink for Failing {
        fn write(&mut self, _: &Event) -> Result<()> {
            Err(Error::sink("/out/part-1", "cannot write to", std::io::Error::other("disk full")))
        }
        fn wants_flush(&self) -> bool {
            true
        }
        fn flush(&mut self) -> Result<()> {
            self.flushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn rollback(&mut self) -> Result<bool> {
            Ok(true)
        }
    }

    fn event() -> Event {
        Event::Restarted { from: wal2arrow_consumer::Lsn(1), reason: "test".into() }
    }

    #[tokio::test]
    async fn a_flush_after_a_failed_write_reports_that_write_and_flushes_nothing() {
        let flushes = std::sync::Arc::default();
        let mut worker =
            Worker::start(Failing { flushes: std::sync::Arc::clone(&flushes) }).unwrap();
        worker.write(event()).await.unwrap();
        worker.write(event()).await.unwrap();
        let e = worker.flush().await.unwrap_err();
        assert!(
            matches!(&e, Error::Sink { path, .. } if path.ends_with("part-1")),
            "the write's own error: {e}"
        );
        assert_eq!(flushes.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(!worker.wants_flush().await.unwrap());
        assert!(worker.rollback().await.unwrap(), "a failed sink may still roll back");
        assert!(worker.finish().await.is_none());
    }

    #[tokio::test]
    async fn the_failure_is_reported_without_being_asked() {
        let mut worker = Worker::start(Failing { flushes: std::sync::Arc::default() }).unwrap();
        worker.write(event()).await.unwrap();
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), worker.failure())
            .await
            .expect("reported");
        assert!(e.to_string().contains("disk full"), "{e}");
        assert!(worker.finish().await.is_none(), "reported once");
    }

    #[tokio::test]
    async fn a_failure_nobody_heard_of_comes_back_when_the_thread_finishes() {
        let worker = Worker::start(Failing { flushes: std::sync::Arc::default() }).unwrap();
        worker.write(event()).await.unwrap();
        let e = worker.finish().await.expect("the failed write");
        assert!(matches!(&e, Error::Sink { path, .. } if path.ends_with("part-1")), "{e}");
    }
}
