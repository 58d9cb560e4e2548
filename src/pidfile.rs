//! The pid file: written atomically by whichever process serves, removed only by its owner.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `pid` to `path` atomically: a temporary file in the same directory, then a rename,
/// so a reader sees the old content or the new one, never an empty or partial file.
pub(crate) fn write(path: &Path, pid: u32) -> Result<()> {
    let err = |source| Error::PidFile {
        path: path.to_owned(),
        source,
    };
    let tmp = temp_path(path, pid);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        writeln!(file, "{pid}")?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Checks that `pid`'s pid file can be written at `path`, without touching `path` itself: the
/// temporary file the real write uses is created and removed.
pub(crate) fn check_writable(path: &Path, pid: u32) -> Result<()> {
    let tmp = temp_path(path, pid);
    fs::File::create(&tmp)
        .and_then(|_| fs::remove_file(&tmp))
        .map_err(|source| Error::PidFile {
            path: path.to_owned(),
            source,
        })
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

fn temp_path(path: &Path, pid: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pid".to_owned());
    path.with_file_name(format!(".{name}.{pid}.tmp"))
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
    fn unwritable_directory_is_an_error_naming_the_file() {
        let err = write(Path::new("/proc/actix-endless/app.pid"), 1).unwrap_err();
        assert!(
            err.to_string().contains("/proc/actix-endless/app.pid"),
            "{err}"
        );
    }
}
