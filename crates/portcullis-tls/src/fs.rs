//! Writing state to disk: private folders (0700) and files replaced atomically.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `data` to a temporary file created with `mode`, syncs it, then renames it over
/// `path`, so readers see the old file or the new one, never half of one. The temporary
/// name is unique to the call, so two writers of one file (a certificate issued here and
/// the same one arriving from the cluster store) each complete, the last rename winning.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replacing(path, data, mode, true)
}

/// As [`write_atomic`] without syncing: for a cache whose source of truth is elsewhere (a
/// certificate from the cluster store). A crash may leave an empty or short file, which
/// its reader reports and ignores; it never leaves half of one file beside the old other.
pub fn write_atomic_unsynced(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replacing(path, data, mode, false)
}

fn write_replacing(path: &Path, data: &[u8], mode: u32, sync: bool) -> io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        if sync {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn concurrent_writers_of_one_file_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, format!("writer {i}").as_bytes(), 0o600).unwrap();
                    }
                });
            }
        });
        assert!(fs::read_to_string(&path).unwrap().starts_with("writer "));
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn files_get_the_mode_asked_for_and_replace_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).unwrap();
        assert_eq!(
            fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let f = sub.join("key.pem");
        write_atomic(&f, b"one", 0o600).unwrap();
        write_atomic(&f, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!sub.join("key.tmp").exists());
    }
}
