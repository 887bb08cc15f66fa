//! The data-path workers: a few long-lived threads that do the kernel work
//! of ADD and DEL synchronously, in batches ([`super::batch`]). Each lives
//! in the node's namespace with its own netlink socket there; it enters a
//! pod's namespace only to open a socket in it and comes straight back. An
//! async caller hands a job over and awaits its result, so no runtime
//! thread ever changes namespace or blocks on the kernel, and a job costs
//! two thread hand-overs instead of one per request.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use nix::sched::{CloneFlags, setns};
use tracing::{error, warn};

use super::batch::NlSocket;
use crate::dataplane::DataplaneError;

/// How many workers: ADDs mostly wait on the kernel's RTNL lock, so more
/// threads would mostly wait on each other.
const WORKERS: usize = 2;

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// What a job works with.
#[derive(Debug)]
pub struct Worker {
    /// A socket in the node's namespace.
    pub node: NlSocket,
    home: Arc<OwnedFd>,
    /// Set when the thread could not come back to the node's namespace:
    /// it stops after this job.
    lost: bool,
}

impl Worker {
    /// A socket opened inside `netns`; the thread is back in the node's
    /// namespace when this returns.
    pub fn socket_in(&mut self, netns: &impl AsFd) -> Result<NlSocket, DataplaneError> {
        setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| DataplaneError::Kernel {
            op: "setns (pod netns)",
            detail: e.to_string(),
        })?;
        let socket = NlSocket::open();
        if let Err(e) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            self.lost = true;
            error!(error = %e, "a data-path worker could not return to the node's namespace; it stops");
        }
        socket.map_err(|e| DataplaneError::Kernel {
            op: "netlink socket in pod netns",
            detail: e.to_string(),
        })
    }
}

/// The workers' queue.
#[derive(Debug)]
pub struct Workers {
    queue: Sender<Job>,
}

impl Workers {
    /// Starts the workers in the namespace `home` (the node's); fails if
    /// they cannot enter it or open their sockets there.
    pub async fn start(home: OwnedFd) -> io::Result<Workers> {
        let (queue, jobs) = channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        let home = Arc::new(home);
        for _ in 0..WORKERS {
            let (ready, started) = tokio::sync::oneshot::channel();
            spawn_worker(Arc::clone(&jobs), Arc::clone(&home), Some(ready))?;
            started
                .await
                .map_err(|_| io::Error::other("a data-path worker died starting"))??;
        }
        Ok(Workers { queue })
    }

    /// Runs `job` on a worker and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> Result<T, DataplaneError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |w| {
            let _ = done.send(job(w));
        });
        let gone = || DataplaneError::Kernel {
            op: "data-path worker",
            detail: "the data-path workers are gone".into(),
        };
        self.queue.send(job).map_err(|_| gone())?;
        result.await.map_err(|_| gone())
    }
}

impl Worker {
    /// A worker for the calling thread: into `home`, with a socket there.
    fn enter(home: &Arc<OwnedFd>) -> io::Result<Worker> {
        setns(home.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(Worker {
            node: NlSocket::open()?,
            home: Arc::clone(home),
            lost: false,
        })
    }
}

/// A thread that enters `home`, opens its socket there and serves;
/// `ready` hears whether it got that far.
fn spawn_worker(
    jobs: Arc<Mutex<Receiver<Job>>>,
    home: Arc<OwnedFd>,
    ready: Option<tokio::sync::oneshot::Sender<io::Result<()>>>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("datapath".into())
        .spawn(move || match Worker::enter(&home) {
            Ok(worker) => {
                if let Some(ready) = ready {
                    let _ = ready.send(Ok(()));
                }
                serve(worker, jobs, home)
            }
            Err(e) => {
                error!(error = %e, "a data-path worker could not start");
                if let Some(ready) = ready {
                    let _ = ready.send(Err(e));
                }
            }
        })?;
    Ok(())
}

fn serve(mut worker: Worker, jobs: Arc<Mutex<Receiver<Job>>>, home: Arc<OwnedFd>) {
    loop {
        let job = {
            let queue = jobs.lock().unwrap_or_else(|p| p.into_inner());
            queue.recv()
        };
        let Ok(job) = job else {
            return; // the data path is gone
        };
        job(&mut worker);
        if worker.lost {
            // This thread is in the wrong namespace: a new one takes its
            // place.
            warn!("replacing a data-path worker");
            if let Err(e) = spawn_worker(jobs, home, None) {
                error!(error = %e, "could not spawn a data-path worker");
            }
            return;
        }
    }
}
