//! The compile cache: components compiled once and kept on disk, keyed by their bytes and by
//! everything that shapes the machine code (wasmtime's compatibility hash of the engine's
//! configuration, fuel metering included, and poolhost's version), so a later run loads the
//! compiled code instead of compiling again.
//!
//! Compiled code is run without being checked, so the cache is trusted only when it is private:
//! a directory owned by this user that nobody else can write to. Entries are written to a
//! temporary file in the directory and renamed into place, so a reader never sees half of one
//! and runs racing to fill the same entry are harmless.

use std::fs::{self, DirBuilder};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

/// Bumped when the layout of entries or the key changes.
const FORMAT: &str = "poolhost-compile-cache-1";

/// A private directory of compiled components.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
}

/// Why a directory cannot serve as the compile cache.
#[derive(Debug, thiserror::Error)]
#[error("cannot use `{}` as the compile cache: {reason}", dir.display())]
pub struct CacheError {
    /// The directory.
    pub dir: PathBuf,
    /// Why not.
    pub reason: String,
}

impl CompileCache {
    /// Opens the cache in `dir`, creating it (mode 0700) if it does not exist.
    ///
    /// # Errors
    /// If it cannot be created, or if it is not private: not a directory owned by this user, or
    /// writable by its group or others. Code from a directory others can write to could be
    /// theirs.
    pub fn open(dir: impl Into<PathBuf>) -> Result<CompileCache, CacheError> {
        let dir = dir.into();
        let error = |reason: String| CacheError {
            dir: dir.clone(),
            reason,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| error(e.to_string()))?;
        let meta = fs::metadata(&dir).map_err(|e| error(e.to_string()))?;
        if !meta.is_dir() {
            return Err(error("not a directory".into()));
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(error("it belongs to another user".into()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(error(format!(
                "others can write to it (mode {:o}); make it private with `chmod 700`",
                meta.mode() & 0o777
            )));
        }
        Ok(CompileCache { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the compiled form of `wasm` for `engine` is kept.
    pub(super) fn entry(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut hasher = Sha256Hasher(Sha256::new());
        FORMAT.hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.0.update(wasm);
        let digest = hasher.0.finalize();
        let name: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        self.dir.join(format!("{name}.cwasm"))
    }

    /// Stores `compiled` as `entry`, atomically.
    pub(super) fn store(&self, entry: &Path, compiled: &[u8]) -> io::Result<()> {
        // tempfile creates it 0600 whatever the umask.
        let mut file = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(&self.dir)?;
        file.write_all(compiled)?;
        file.persist(entry).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Writes `bytes` to a new file at `path` that only this user can read or write (0600, whatever
/// the umask): compiled code is run unchecked, so nobody else may change it.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// Feeds what a `Hash` implementation writes into SHA-256, for a key that is the same in every
/// process and every build (std's hashers promise neither).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("a digest has 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cache_others_can_write_to_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        CompileCache::open(&cache).unwrap();
        assert_eq!(fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o777)).unwrap();
        let error = CompileCache::open(&cache).unwrap_err();
        assert!(error.to_string().contains("others can write to it"), "{error}");
    }

    #[test]
    fn keys_depend_on_the_bytes_and_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        let plain = Engine::new(&super::super::base_config(false)).unwrap();
        let metered = Engine::new(&super::super::base_config(true)).unwrap();
        let a = cache.entry(&plain, b"\0asm one");
        assert_eq!(a, cache.entry(&plain, b"\0asm one"));
        assert_ne!(a, cache.entry(&plain, b"\0asm two"));
        assert_ne!(a, cache.entry(&metered, b"\0asm one"));
    }
}
