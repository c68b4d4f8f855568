//! Runs the library's futures for the synchronous API.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

static STARTED: AtomicBool = AtomicBool::new(false);
static FORKED: AtomicBool = AtomicBool::new(false);

/// The runtime whose worker threads drive the Redis connections of every
/// `Cache`, for the synchronous and the asyncio API alike; an error in a
/// child forked after it started, which has the runtime but not its
/// threads (waiting on it would hang).
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    if FORKED.load(Ordering::Relaxed) {
        return Err(PyRuntimeError::new_err(
            "smartcache was used in this process's parent before it forked, and its worker \
             threads do not survive a fork: build the Cache after forking (e.g. gunicorn \
             without --preload, or in a post_fork hook)",
        ));
    }
    STARTED.store(true, Ordering::Relaxed);
    Ok(pyo3_async_runtimes::tokio::get_runtime())
}

/// Called in a forked child (`os.register_at_fork`).
pub(crate) fn forked() {
    if STARTED.load(Ordering::Relaxed) {
        FORKED.store(true, Ordering::Relaxed);
    }
}

/// Polls `fut` on the calling thread until it completes, parking in
/// between, with the runtime's handle entered for timers and spawns.
///
/// Not `Runtime::block_on`: a `compute` callable runs inside the future on
/// this thread, and when it calls the cache again (a cached value built
/// from other cached values) a nested `block_on` would panic.
pub(crate) fn wait<F: Future>(fut: F) -> PyResult<F::Output> {
    let _context = runtime()?.enter();
    let signal = Arc::new(Signal {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(Arc::clone(&signal));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Ok(out);
        }
        // A nested wait on this thread may consume the park token meant
        // for us; the flag is ours alone.
        while !signal.woken.swap(false, Ordering::Acquire) {
            thread::park();
        }
    }
}

struct Signal {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}
