//! In-process wake-up of blocked readers: every handle on the same file shares one
//! [`Notifier`], bumped by each append (readers in other processes poll instead).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// A generation counter with a condition variable.
#[derive(Default)]
pub struct Notifier {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Notifier {
    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    /// Something was appended: wake every waiter.
    pub fn bump(&self) {
        *self.generation.lock() += 1;
        self.cv.notify_all();
    }

    /// Wait up to `timeout` for the generation to move past `seen`; true if it did.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> bool {
        let mut g = self.generation.lock();
        if *g != seen {
            return true;
        }
        self.cv.wait_for(&mut g, timeout);
        *g != seen
    }
}

/// The notifier shared by every handle of this process on `path`.
pub fn notifier_for(path: &Path) -> Arc<Notifier> {
    static ALL: OnceLock<Mutex<HashMap<PathBuf, Weak<Notifier>>>> = OnceLock::new();
    // NOTE: canonicalize so that two spellings of one file share a notifier; the file
    // exists by now (opened before this is called).
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut all = ALL.get_or_init(Default::default).lock();
    all.retain(|_, w| w.strong_count() > 0);
    if let Some(n) = all.get(&key).and_then(Weak::upgrade) {
        return n;
    }
    let n = Arc::new(Notifier::default());
    all.insert(key, Arc::downgrade(&n));
    n
}
