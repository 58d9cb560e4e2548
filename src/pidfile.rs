//! The pid file: written atomically by whichever process serves, removed only by its owner.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The pid file's mode, whatever the umask: readable by everyone, as pid files are.
const MODE: u32 = 0o644;
/// How many unpredictable temporary names are tried before giving up.
const TEMP_TRIES: usize = 16;

/// Writes `pid` to `path` atomically: a new temporary file in the same directory, then a
/// rename, so a reader sees the old content or the new one, never an empty or partial file.
///
/// The temporary file has an unpredictable name and is created exclusively without following
/// links (`O_CREAT | O_EXCL | O_NOFOLLOW`), so links planted in a shared directory are never
/// written through.
pub(crate) fn write(path: &Path, pid: u32) -> Result<()> {
    let err = |source| Error::PidFile {
        path: path.to_owned(),
        source,
    };
    check_not_directory(path).map_err(err)?;
    let (tmp, mut file) = create_temp(path).map_err(err)?;
    let result = (|| {
        writeln!(file, "{pid}")?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Checks that `pid`'s pid file can be written at `path`, without touching `path` itself: a
/// temporary file like the real write's is created and removed.
pub(crate) fn check_writable(path: &Path) -> Result<()> {
    check_not_directory(path)
        .and_then(|()| create_temp(path))
        .and_then(|(tmp, _)| fs::remove_file(&tmp))
        .map_err(|source| Error::PidFile {
            path: path.to_owned(),
            source,
        })
}

/// Refuses to start when `path` names a live process that runs this same program and is not
/// the process that started this one (an upgrade) nor this one: another instance serves with
/// the same pid file. A pid that now belongs to another program is a stale file (a warning).
pub(crate) fn check_not_in_use(path: &Path, me: u32, parent: u32) -> Result<()> {
    let Ok(Some(named)) = read(path) else {
        return Ok(());
    };
    if named == me || named == parent || !Path::new(&format!("/proc/{named}")).exists() {
        return Ok(());
    }
    let exe = |pid: &str| fs::read_link(format!("/proc/{pid}/exe")).ok();
    let strip = |p: PathBuf| {
        let text = p.to_string_lossy().into_owned();
        text.strip_suffix(" (deleted)")
            .map(str::to_owned)
            .unwrap_or(text)
    };
    match (exe(&named.to_string()).map(strip), exe("self").map(strip)) {
        (Some(theirs), Some(ours)) if theirs != ours => {
            log::warn!(
                "pid file {} names pid {named}, which now runs {theirs}: a stale pid file, replaced",
                path.display()
            );
            Ok(())
        }
        _ => Err(Error::PidFile {
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("names pid {named}, which is running this program: another instance is serving with this pid file (stop it, or give each instance its own pid file)"),
            ),
        }),
    }
}

fn check_not_directory(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory, not a file",
        )),
        _ => Ok(()),
    }
}

/// Creates a new temporary file next to `path`, exclusively and never through a link, with
/// mode 0644 whatever the umask.
fn create_temp(path: &Path) -> io::Result<(PathBuf, fs::File)> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pid".to_owned());
    let mut last = None;
    for attempt in 0..TEMP_TRIES {
        // RandomState is seeded from the operating system's randomness.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(attempt);
        hasher.write_u32(std::process::id());
        let tmp = path.with_file_name(format!(".{name}.{:016x}.tmp", hasher.finish()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(file) => {
                file.set_permissions(fs::Permissions::from_mode(MODE))?;
                return Ok((tmp, file));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Removes `path` if it still names `pid`; a file naming another process is left alone.
pub(crate) fn remove_if_ours(path: &Path, pid: u32) -> Result<bool> {
    match read(path) {
        Ok(Some(found)) if found == pid => {
            fs::remove_file(path)
                .map(|()| true)
                .map_err(|source| Error::PidFile {
                    path: path.to_owned(),
                    source,
                })
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::PidFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads the pid in `path`; `Ok(None)` if the content is not a pid.
pub(crate) fn read(path: &Path) -> io::Result<Option<u32>> {
    Ok(fs::read_to_string(path)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_remove_only_our_own() {
        let dir = std::env::temp_dir().join(format!("actix-endless-pid-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.pid");
        write(&path, 7).unwrap();
        assert_eq!(read(&path).unwrap(), Some(7));
        assert!(!remove_if_ours(&path, 8).unwrap());
        assert!(path.exists());
        assert!(remove_if_ours(&path, 7).unwrap());
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn written_with_mode_0644_and_never_through_a_link() {
        let dir =
            std::env::temp_dir().join(format!("actix-endless-pid-link-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, "precious").unwrap();
        let path = dir.join("app.pid");
        // Links at every name the old scheme used, and a directory at the pid file's path.
        std::os::unix::fs::symlink(
            &victim,
            dir.join(format!(".app.pid.{}.tmp", std::process::id())),
        )
        .unwrap();
        write(&path, 42).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name().to_string_lossy().ends_with(".tmp")
                    && e.file_type().map(|t| t.is_file()).unwrap_or(false)
            })
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        let as_dir = dir.join("dir.pid");
        fs::create_dir(&as_dir).unwrap();
        let err = check_writable(&as_dir).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_the_file() {
        let err = write(Path::new("/proc/actix-endless/app.pid"), 1).unwrap_err();
        assert!(
            err.to_string().contains("/proc/actix-endless/app.pid"),
            "{err}"
        );
    }
}
