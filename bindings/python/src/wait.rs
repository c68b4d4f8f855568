//! Runs the library's futures for the synchronous API.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// The runtime whose worker threads drive the Redis connections of every
/// `Cache`, for the synchronous and the asyncio API alike.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Polls `fut` on the calling thread until it completes, parking in
/// between, with the runtime's handle entered for timers and spawns.
///
/// Not `Runtime::block_on`: a `compute` callable runs inside the future on
/// this thread, and when it calls the cache again (a cached value built
/// from other cached values) a nested `block_on` would panic.
pub(crate) fn wait<F: Future>(fut: F) -> F::Output {
    let _context = runtime().enter();
    let signal = Arc::new(Signal {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(Arc::clone(&signal));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
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
