//! The manifest: the one small file that says what the committed store is (array lengths and
//! segments, index runs, undo files, UTXO and history state, metadata). Replaced atomically on
//! every commit: written to `MANIFEST.tmp`, fsynced, renamed over `MANIFEST`, directory fsynced.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::array::{ArrayState, COUNTS, HEADERS, TXHASHES};
use crate::decode::{put_blob, Cursor};
use crate::error::{Error, Result};
use crate::file::{sync_dir, write_new_file};
use crate::frame::{decode_frame, encode_frame};
use crate::undo::UndoRef;
use crate::varint;

pub const MANIFEST: &str = "MANIFEST";
pub const MANIFEST_TMP: &str = "MANIFEST.tmp";
const MAGIC: &[u8; 8] = b"FERRUMST";
/// Bumped whenever a file format changes; 3: bit-packed history blocks; 2: undo records
/// grouped by key, per-tx output counts, zstd (older stores must be resynced).
const VERSION: u64 = 3;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Next id for a new data file; ids are never reused within a committed history.
    pub next_id: u64,
    pub tx_count: u64,
    pub headers: ArrayState,
    pub counts: ArrayState,
    pub txhashes: ArrayState,
    /// Txid index runs: (file id, cap).
    pub txindex: Vec<(u64, u64)>,
    pub undo: Vec<UndoRef>,
    pub utxo: Vec<u8>,
    pub history: Vec<u8>,
    pub meta: BTreeMap<String, Vec<u8>>,
    /// Lean mode: no txids stored (`txhashes` stays empty), txid index runs hold whole txids.
    pub lean: bool,
}

/// Bit 0 of the optional trailing flags field: the store is lean. The field is written only
/// when a flag is set, so full-mode manifests are byte-for-byte those of earlier builds.
const FLAG_LEAN: u64 = 1;

fn put_array(out: &mut Vec<u8>, a: &ArrayState) {
    varint::put(out, a.len);
    varint::put(out, u64::from(a.tail_crc));
    varint::put(out, a.segments.len() as u64);
    for &id in &a.segments {
        varint::put(out, id);
    }
}

fn get_array(c: &mut Cursor) -> Result<ArrayState> {
    let len = c.varint()?;
    let tail_crc = c.u32()?;
    let n = c.count(1)?;
    let segments = (0..n).map(|_| c.varint()).collect::<Result<Vec<u64>>>()?;
    Ok(ArrayState {
        len,
        tail_crc,
        segments,
    })
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        varint::put(&mut p, VERSION);
        varint::put(&mut p, self.next_id);
        varint::put(&mut p, self.tx_count);
        for a in [&self.headers, &self.counts, &self.txhashes] {
            put_array(&mut p, a);
        }
        varint::put(&mut p, self.txindex.len() as u64);
        for &(id, cap) in &self.txindex {
            varint::put(&mut p, id);
            varint::put(&mut p, cap);
        }
        varint::put(&mut p, self.undo.len() as u64);
        for u in &self.undo {
            varint::put(&mut p, u.id);
            varint::put(&mut p, u64::from(u.first));
            varint::put(&mut p, u64::from(u.last));
        }
        put_blob(&mut p, &self.utxo);
        put_blob(&mut p, &self.history);
        varint::put(&mut p, self.meta.len() as u64);
        for (k, v) in &self.meta {
            put_blob(&mut p, k.as_bytes());
            put_blob(&mut p, v);
        }
        if self.lean {
            varint::put(&mut p, FLAG_LEAN);
        }
        let mut out = MAGIC.to_vec();
        encode_frame(&mut out, &p);
        out
    }

    pub fn decode(data: &[u8], path: &Path) -> Result<Manifest> {
        if data.get(..MAGIC.len()) != Some(&MAGIC[..]) {
            return Err(Error::corrupt(path, 0, "not a ferrum store manifest"));
        }
        let (payload, end) = decode_frame(data, MAGIC.len(), path)?;
        if end != data.len() {
            return Err(Error::corrupt(
                path,
                end as u64,
                "trailing bytes after manifest",
            ));
        }
        let mut c = Cursor::new(payload, path, MAGIC.len() as u64);
        let version = c.varint()?;
        if version != VERSION {
            let dir = path.parent().unwrap_or(Path::new("."));
            let age = if version < VERSION {
                "an older"
            } else {
                "a newer"
            };
            return Err(Error::Invalid(format!(
                "the store in {} has format version {version}, written by {age} Ferrum; this \
                 build reads version {VERSION}: delete the directory and resync",
                dir.display()
            )));
        }
        let next_id = c.varint()?;
        let tx_count = c.varint()?;
        let headers = get_array(&mut c)?;
        let counts = get_array(&mut c)?;
        let txhashes = get_array(&mut c)?;
        let n = c.count(2)?;
        let txindex = (0..n)
            .map(|_| Ok((c.varint()?, c.varint()?)))
            .collect::<Result<Vec<_>>>()?;
        let n = c.count(3)?;
        let undo = (0..n)
            .map(|_| {
                Ok(UndoRef {
                    id: c.varint()?,
                    first: c.u32()?,
                    last: c.u32()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let utxo = c.blob()?.to_vec();
        let history = c.blob()?.to_vec();
        let n = c.count(2)?;
        let mut meta = BTreeMap::new();
        for _ in 0..n {
            let k = String::from_utf8(c.blob()?.to_vec())
                .map_err(|_| c.corrupt("metadata key is not UTF-8"))?;
            meta.insert(k, c.blob()?.to_vec());
        }
        let flags = if c.is_empty() { 0 } else { c.varint()? };
        if flags != 0 && flags != FLAG_LEAN {
            return Err(c.corrupt("unknown manifest flags"));
        }
        c.finish()?;
        let m = Manifest {
            next_id,
            tx_count,
            headers,
            counts,
            txhashes,
            txindex,
            undo,
            utxo,
            history,
            meta,
            lean: flags == FLAG_LEAN,
        };
        m.check().map_err(|reason| c.corrupt(&reason))?;
        Ok(m)
    }

    /// Consistency a checksum cannot vouch for (a manifest written by a buggy build).
    fn check(&self) -> std::result::Result<(), String> {
        if self.headers.len != self.counts.len {
            return Err("header and tx count arrays differ in length".into());
        }
        if self.lean && self.txhashes.len != 0 {
            return Err("a lean store holds tx hashes".into());
        }
        if !self.lean && self.txhashes.len != self.tx_count {
            return Err("tx hash array length differs from the tx count".into());
        }
        for (a, spec) in [
            (&self.headers, &HEADERS),
            (&self.counts, &COUNTS),
            (&self.txhashes, &TXHASHES),
        ] {
            if a.segments.len() as u64 != a.len.div_ceil(spec.segment) {
                return Err(format!(
                    "{} array lists the wrong number of segments",
                    spec.name
                ));
            }
        }
        if self.headers.len > u64::from(u32::MAX) {
            return Err("block count out of range".into());
        }
        let ids = self
            .headers
            .segments
            .iter()
            .chain(&self.counts.segments)
            .chain(&self.txhashes.segments)
            .chain(self.txindex.iter().map(|(id, _)| id))
            .chain(self.undo.iter().map(|u| &u.id));
        if ids.into_iter().any(|&id| id >= self.next_id) {
            return Err("file id beyond the id counter".into());
        }
        Ok(())
    }

    /// Reads `dir/MANIFEST`; `None` if the store has never committed.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(MANIFEST);
        match fs::read(&path) {
            Ok(data) => Manifest::decode(&data, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Makes this manifest the committed one: tmp file, fsync, rename, directory fsync.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(MANIFEST_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&tmp, e)),
        }
        write_new_file(&tmp, &self.encode())?;
        let path = dir.join(MANIFEST);
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            next_id: 9,
            tx_count: 3,
            headers: ArrayState {
                len: 2,
                tail_crc: 77,
                segments: vec![1],
            },
            counts: ArrayState {
                len: 2,
                tail_crc: 5,
                segments: vec![2],
            },
            txhashes: ArrayState {
                len: 3,
                tail_crc: u32::MAX,
                segments: vec![3],
            },
            txindex: vec![(4, 3)],
            undo: vec![UndoRef {
                id: 5,
                first: 0,
                last: 1,
            }],
            utxo: vec![1, 2, 3],
            history: vec![],
            meta: [("tip".to_string(), b"abc".to_vec())].into(),
            lean: false,
        }
    }

    fn lean_sample() -> Manifest {
        Manifest {
            txhashes: ArrayState::default(),
            lean: true,
            ..sample()
        }
    }

    #[test]
    fn write_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), None);
        sample().write(dir.path()).unwrap();
        sample().write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(sample()));
        lean_sample().write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), Some(lean_sample()));
    }

    #[test]
    fn only_a_lean_manifest_carries_flags() {
        let payload = |m: &Manifest| {
            let bytes = m.encode();
            decode_frame(&bytes, MAGIC.len(), Path::new("M"))
                .unwrap()
                .0
                .to_vec()
        };
        let full_without_hashes = Manifest {
            lean: false,
            ..lean_sample()
        };
        assert_eq!(
            payload(&lean_sample()),
            [payload(&full_without_hashes), vec![FLAG_LEAN as u8]].concat()
        );
        // Unknown flags are corrupt.
        let mut flags_2 = payload(&lean_sample());
        *flags_2.last_mut().unwrap() = 2;
        let mut bytes = MAGIC.to_vec();
        encode_frame(&mut bytes, &flags_2);
        let err = Manifest::decode(&bytes, Path::new("MANIFEST")).unwrap_err();
        assert!(
            err.to_string().ends_with(": unknown manifest flags"),
            "{err}"
        );
        // A lean manifest with tx hashes, or a full one without all of them, is corrupt.
        let lean_with_hashes = Manifest {
            lean: true,
            ..sample()
        };
        for bad in [lean_with_hashes, full_without_hashes] {
            let err = Manifest::decode(&bad.encode(), Path::new("MANIFEST")).unwrap_err();
            assert!(
                err.to_string().starts_with("corrupt store file MANIFEST"),
                "{err}"
            );
        }
    }

    #[test]
    fn another_format_version_says_to_resync() {
        for (version, age) in [(2, "an older"), (4, "a newer")] {
            let mut p = Vec::new();
            varint::put(&mut p, version);
            let mut bytes = MAGIC.to_vec();
            encode_frame(&mut bytes, &p);
            let err = Manifest::decode(&bytes, Path::new("/srv/db/MANIFEST")).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!(
                    "the store in /srv/db has format version {version}, written by {age} \
                     Ferrum; this build reads version 3: delete the directory and resync"
                )
            );
        }
    }

    #[test]
    fn every_flip_and_truncation_is_corrupt() {
        let bytes = sample().encode();
        let path = Path::new("MANIFEST");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            let err = Manifest::decode(&bad, path).unwrap_err().to_string();
            assert!(
                err.starts_with("corrupt store file MANIFEST at offset "),
                "{err}"
            );
            let err = Manifest::decode(&bytes[..i], path).unwrap_err().to_string();
            assert!(
                err.starts_with("corrupt store file MANIFEST at offset "),
                "{err}"
            );
        }
    }
}
