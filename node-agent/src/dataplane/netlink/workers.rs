//! The data-path workers: the kernel work of ADD and DEL, done
//! synchronously, in batches ([`super::batch`]). A job runs on the calling
//! runtime thread when it can (`block_in_place`, with a netlink socket of
//! the node's namespace from a small pool): no hand-over to another thread
//! and back, which costs two wake-ups of idle CPUs per job. When the pool
//! is empty (many ADDs at once) or the runtime cannot block, it goes to a
//! few long-lived threads that live in the node's namespace with their own
//! sockets. Either way a job enters a pod's namespace only to open a socket
//! in it and comes straight back; a runtime thread that could not come back
//! aborts the agent (crash-only: it restarts from its store), since every
//! task it ran next would act in the wrong namespace.

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

/// Node sockets kept for jobs run on the caller's thread: as many as ADDs
/// usually run at once on a node.
const INLINE_SOCKETS: usize = 4;

/// What a job works with.
#[derive(Debug)]
pub struct Worker {
    /// A socket in the node's namespace.
    pub node: NlSocket,
    /// The namespace the thread comes back to after entering a pod's.
    home: Arc<OwnedFd>,
    /// Set when the thread could not come back to `home`: a worker thread
    /// stops after this job, a runtime thread aborts the agent.
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

/// The workers' queue, and the sockets for jobs run in place.
#[derive(Debug)]
pub struct Workers {
    queue: Sender<Job>,
    /// Node sockets for jobs run on the caller's thread.
    pool: Mutex<Vec<NlSocket>>,
    /// The runtime threads' own namespace, which they come back to.
    own: Arc<OwnedFd>,
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
        let own = Arc::new(OwnedFd::from(std::fs::File::open(
            "/proc/thread-self/ns/net",
        )?));
        let workers = Workers {
            queue,
            pool: Mutex::new(Vec::new()),
            own,
        };
        for _ in 0..INLINE_SOCKETS {
            let socket = workers
                .queued(|_| NlSocket::open())
                .await
                .map_err(|e| io::Error::other(e.to_string()))??;
            workers.pool().push(socket);
        }
        Ok(workers)
    }

    /// Runs `job` and waits for its result: on this thread when the
    /// runtime lets it block and a node socket is free, else on a worker.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Worker) -> T + Send + 'static,
    ) -> Result<T, DataplaneError> {
        let can_block = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let socket = if can_block { self.pool().pop() } else { None };
        let Some(node) = socket else {
            return self.queued(job).await;
        };
        let mut worker = Worker {
            node,
            home: Arc::clone(&self.own),
            lost: false,
        };
        let out = tokio::task::block_in_place(|| job(&mut worker));
        if worker.lost {
            error!("a runtime thread could not return to the agent's namespace; aborting");
            std::process::abort();
        }
        self.pool().push(worker.node);
        Ok(out)
    }

    /// Runs `job` on a worker thread and waits for its result.
    async fn queued<T: Send + 'static>(
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

impl Workers {
    fn pool(&self) -> std::sync::MutexGuard<'_, Vec<NlSocket>> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
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
