//! A dataset's fingerprint: a hash that changes when the dataset does.
//!
//! `Dataset::fingerprint` is the hex SHA-256 of, in order and each length-prefixed so no two
//! datasets can collide by concatenation: a version tag, the format, the class names, then
//!
//! - for file-backed datasets, every item's label, path (relative to the dataset's root, or as
//!   the manifest wrote it), size and modification time in nanoseconds;
//! - for IDX datasets, every IDX file's name and the SHA-256 of its stored bytes (computed
//!   while reading them, so it costs nothing extra);
//!
//! and finally every file skipped while listing, with the kind of reason. It is cheap — no file
//! is read again — and describes the dataset *as listed*: to learn whether a dataset changed on
//! disk, open it again and compare fingerprints. Moving a dataset to another folder keeps its
//! fingerprint; touching, editing, adding, removing or relabelling a file changes it.

use sha2::{Digest, Sha256};

use super::{Dataset, Format, Source};

/// Bumped whenever what goes into the hash changes, so old fingerprints never match new ones.
const VERSION: &[u8] = b"task2vec dataset fingerprint v1";

/// Feeds length-prefixed fields to a hasher.
struct Fields(Sha256);

impl Fields {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    fn int(&mut self, v: i128) {
        self.0.update(v.to_le_bytes());
    }
}

impl Dataset {
    /// The hex SHA-256 fingerprint of the dataset as listed: format, class names, every item's
    /// label with its relative path, size and modification time (IDX: the SHA-256 of each IDX
    /// file), and the skipped files. No file is read again, so it is cheap. Re-open a dataset
    /// and compare fingerprints to learn whether it changed; a moved dataset keeps its
    /// fingerprint.
    pub fn fingerprint(&self) -> String {
        let mut h = Fields(Sha256::new());
        h.bytes(VERSION);
        h.bytes(self.format.name().as_bytes());
        h.int(self.classes.len() as i128);
        for c in &self.classes {
            h.bytes(c.as_bytes());
        }
        h.int(self.items.len() as i128);
        for (i, item) in self.items.iter().enumerate() {
            h.int(item.label as i128);
            match (&item.source, self.stamps.get(i)) {
                (Source::File(_), Some(stamp)) => {
                    h.bytes(stamp.rel.as_os_str().as_encoded_bytes());
                    h.int(i128::from(stamp.size));
                    h.int(stamp.modified_ns);
                }
                (Source::File(path), None) => h.bytes(path.as_os_str().as_encoded_bytes()),
                (Source::Idx(n), _) => h.int(*n as i128),
            }
        }
        if let Some(idx) = &self.idx {
            h.int(idx.files.len() as i128);
            for (name, digest) in &idx.files {
                h.bytes(name.as_bytes());
                h.bytes(digest);
            }
        }
        // Skipped paths relative to the folder the item paths are relative to.
        let base = match self.format {
            Format::Csv | Format::JsonLines => self.root.parent().unwrap_or(&self.root),
            Format::ImageFolder | Format::Idx => &self.root,
        };
        h.int(self.skipped.len() as i128);
        for s in &self.skipped {
            let rel = s.path.strip_prefix(base).unwrap_or(&s.path);
            h.bytes(rel.as_os_str().as_encoded_bytes());
            h.bytes(s.reason.kind().as_bytes());
        }
        h.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}
