//! The one tokio runtime every resolver and lookup shares.

use once_cell::sync::OnceCell;
use tokio::runtime::Runtime;

use crate::error::Error;

/// Worker threads of the shared runtime. One: a lookup is mostly waiting, the BEAM already has
/// a scheduler per core, and a second worker made every lookup slower by waking it for each
/// answer (measured: 213 µs against 163 µs for a 3-record answer, see bench/README.md).
const WORKER_THREADS: usize = 1;

// Only a built runtime is kept: a build that failed (file descriptors exhausted) is tried again
// by the next call, so the VM does not lose its lookups for the rest of its life.
static RUNTIME: OnceCell<Runtime> = OnceCell::new();

fn build() -> Result<Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(2)
        .thread_name("cluster_srv")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|error| Error::Io(format!("cannot start the tokio runtime: {error}")))
}

/// Builds the shared runtime now, if it is not built yet. The NIF library calls this when it
/// loads; a failure is left for the next `runtime()` call, which tries again.
pub fn start() {
    let _ = runtime();
}

/// The one runtime every resolver and lookup shares, built on first use (or at `start()`).
/// While it cannot be built, every call tries again and reports why it failed.
pub fn runtime() -> Result<&'static Runtime, Error> {
    RUNTIME.get_or_try_init(build)
}
