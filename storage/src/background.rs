//! A merge running on a thread of its own. At the tip, a merge of a whole structure would
//! hold up the next block for as long as it takes (minutes for mainnet's history or UTXO
//! set), so big merges are started by one `compact` and installed by a later one, if the
//! files they read are still in place as they read them.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// A merge of the files described by `inputs` (each as its id, plus whatever else a merge
/// reads of it, such as a rollback cut), producing a `T`.
pub(crate) struct Background<K, T> {
    inputs: Vec<K>,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<Result<T>>,
}

/// A merge's output: a file that no manifest names until it is installed and committed.
pub(crate) trait Output: Send + 'static {
    /// Deletes it (once its last reader lets go), for a merge that is not installed.
    fn discard(self);
}

/// A merge that may leave nothing (every entry cut or spent) writes no file.
impl<T: Output> Output for Option<T> {
    fn discard(self) {
        if let Some(out) = self {
            out.discard();
        }
    }
}

impl<K: Copy + PartialEq, T: Output> Background<K, T> {
    /// Starts `merge` on a thread named `name`; it should check the flag it is given with
    /// [`check_cancel`] as it goes. `dir` names the store in a spawn error.
    pub fn start(
        name: &str,
        dir: &Path,
        inputs: Vec<K>,
        merge: impl FnOnce(&AtomicBool) -> Result<T> + Send + 'static,
    ) -> Result<Self> {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || merge(&flag))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Background {
            inputs,
            cancel,
            thread,
        })
    }

    /// Whether the merge in `slot`, if any, is done and waits to be installed (or thrown
    /// away) by the next compaction.
    pub fn done(slot: &Option<Self>) -> bool {
        slot.as_ref().is_some_and(|bg| bg.thread.is_finished())
    }

    /// Asks the merge to stop; whatever it produces will be stale.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Where its inputs are in `now`, if they are all still there as it read them (side by
    /// side, in order) and it was not cancelled.
    pub fn range_in(&self, now: &[K]) -> Option<Range<usize>> {
        if self.cancel.load(Ordering::Relaxed) {
            return None;
        }
        let first = *self.inputs.first()?;
        let start = now.iter().position(|k| *k == first)?;
        let range = start..start + self.inputs.len();
        (now.get(range.clone())? == self.inputs.as_slice()).then_some(range)
    }

    /// Takes the merge out of `slot` if it is done (or, with `wait`, once it is): its output
    /// and where it goes given the current inputs `now`. An output whose inputs changed
    /// meanwhile, or that was cancelled, is discarded; so is a cancelled merge's error.
    pub fn finish(
        slot: &mut Option<Self>,
        wait: bool,
        now: &[K],
    ) -> Result<Option<(Range<usize>, T)>> {
        match slot {
            Some(bg) if wait || bg.thread.is_finished() => {}
            _ => return Ok(None),
        }
        let bg = slot.take().expect("checked above");
        let range = bg.range_in(now);
        let result = bg
            .thread
            .join()
            .map_err(|_| Error::Invalid("a background merge thread panicked".into()))?;
        match (range, result) {
            (Some(range), result) => Ok(Some((range, result?))),
            (None, Ok(out)) => {
                out.discard();
                Ok(None)
            }
            (None, Err(_)) => Ok(None),
        }
    }

    /// Stops the merge in `slot`, if any, waits for its thread and discards its output.
    pub fn stop(slot: &mut Option<Self>) {
        if let Some(bg) = slot {
            bg.cancel();
            // Cancelled, it installs nothing: only its error (if any) is left, and unneeded.
            let _ = Self::finish(slot, true, &[]);
        }
    }
}

/// The error a cancelled merge stops with, once its flag is set.
pub(crate) fn check_cancel(cancel: &AtomicBool, what: &str) -> Result<()> {
    match cancel.load(Ordering::Relaxed) {
        true => Err(Error::Invalid(format!("{what} merge cancelled"))),
        false => Ok(()),
    }
}
