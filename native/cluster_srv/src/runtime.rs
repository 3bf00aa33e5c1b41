//! The one tokio runtime every resolver and lookup shares.

use once_cell::sync::Lazy;
use tokio::runtime::Runtime;

use crate::error::Error;

/// Worker threads of the shared runtime. One: a lookup is mostly waiting, the BEAM already has
/// a scheduler per core, and a second worker made every lookup slower by waking it for each
/// answer (measured: 213 µs against 163 µs for a 3-record answer, see bench/README.md).
const WORKER_THREADS: usize = 1;

static RUNTIME: Lazy<Result<Runtime, String>> = Lazy::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(2)
        .thread_name("cluster_srv")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|error| format!("cannot start the tokio runtime: {error}"))
});

/// Builds the shared runtime now, if it is not built yet. The NIF library calls this when it
/// loads; a failure stays in the runtime's slot for `runtime()` to report.
pub fn start() {
    Lazy::force(&RUNTIME);
}

/// The one runtime every resolver and lookup shares, built on first use (or at `start()`).
pub fn runtime() -> Result<&'static Runtime, Error> {
    RUNTIME
        .as_ref()
        .map_err(|message| Error::Io(message.clone()))
}
