//! Immutable data files: written once and fsynced, then read through mmap. A file is removed
//! from disk only after it has been marked obsolete *and* the last reader has let go of it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// An immutable file, mapped read-only. Share it as `Arc<ImmutableFile>`; the mapping lives as
/// long as any snapshot holds the `Arc`.
pub struct ImmutableFile {
    path: PathBuf,
    map: Option<Mmap>, // None for an empty file, which cannot be mapped
    obsolete: AtomicBool,
}

impl ImmutableFile {
    pub fn open(path: &Path) -> Result<ImmutableFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // Safety: store files are never modified after they are written and fsynced; they are
        // only ever unlinked, which leaves an existing mapping valid.
        let map = if len == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
        };
        Ok(ImmutableFile {
            path: path.to_path_buf(),
            map,
            obsolete: AtomicBool::new(false),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the file for deletion once the last holder drops it. Call this only after a
    /// manifest that no longer names the file has been committed.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for ImmutableFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // Failure leaves an orphan, which the next open removes; nothing is lost.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates `path` (which must not exist), writes `bytes` and fsyncs it. The file only
/// becomes part of the store when a committed manifest names it.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn obsolete_file_is_removed_only_after_last_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run-1.utxo");
        write_new_file(&path, b"abc").unwrap();
        let file = Arc::new(ImmutableFile::open(&path).unwrap());
        let reader = Arc::clone(&file);
        file.mark_obsolete();
        drop(file);
        assert!(path.exists());
        assert_eq!(reader.bytes(), b"abc");
        drop(reader);
        assert!(!path.exists());
    }

    #[test]
    fn empty_file_maps_to_empty_slice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        write_new_file(&path, b"").unwrap();
        assert_eq!(ImmutableFile::open(&path).unwrap().bytes(), b"");
        assert!(
            write_new_file(&path, b"x").is_err(),
            "must refuse to overwrite"
        );
    }
}
