//! The command line of the benchmark's servers without actix-endless (`plain_hello`,
//! `ecdysis_hello`), and the address file they publish.

use std::{fs, io, net::SocketAddr, path::Path, path::PathBuf};

/// `[--bind ADDR]... [--workers N] [--addr-file PATH] [--pid-file PATH]`.
#[derive(Debug, Default)]
pub struct HelloArgs {
    /// `--bind`, in order; `127.0.0.1:8080` when none is given.
    pub binds: Vec<String>,
    /// `--workers`: a positive count.
    pub workers: Option<usize>,
    /// `--addr-file`.
    pub addr_file: Option<PathBuf>,
    /// `--pid-file`, where the program takes one.
    pub pid_file: Option<PathBuf>,
}

/// Parses `args` (without the program name); `usage` is the message for `--help`, and
/// `--pid-file` is accepted only if `pid_file`. `Err` holds a message for the user.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    usage: &str,
    pid_file: bool,
) -> Result<HelloArgs, String> {
    let mut parsed = HelloArgs::default();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bind" => parsed.binds.push(value()?),
            "--workers" => {
                let v = value()?;
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--workers: not a positive integer: {v}"))?;
                parsed.workers = Some(n);
            }
            "--addr-file" => parsed.addr_file = Some(PathBuf::from(value()?)),
            "--pid-file" if pid_file => parsed.pid_file = Some(PathBuf::from(value()?)),
            "-h" | "--help" => return Err(usage.to_owned()),
            other => return Err(format!("unknown argument: {other}")),
        }
    }
    if parsed.binds.is_empty() {
        parsed.binds.push("127.0.0.1:8080".into());
    }
    Ok(parsed)
}

/// Writes `addrs` to `path`, one per line, atomically: a sibling temporary file renamed over
/// `path`, so a reader sees all of them or none.
pub fn write_addr_file(path: &Path, addrs: &[SocketAddr]) -> io::Result<()> {
    let text: String = addrs.iter().map(|a| format!("{a}\n")).collect();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn parses_flags_defaults_and_errors() {
        let a = parse(
            args(&["--workers", "2", "--addr-file", "a"]),
            "usage",
            false,
        )
        .unwrap();
        assert_eq!(a.binds, ["127.0.0.1:8080"]);
        assert_eq!(
            (a.workers, a.addr_file),
            (Some(2), Some(PathBuf::from("a")))
        );
        let a = parse(
            args(&["--bind", "x:1", "--bind", "y:2", "--pid-file", "p"]),
            "u",
            true,
        )
        .unwrap();
        assert_eq!((a.binds.len(), a.pid_file), (2, Some(PathBuf::from("p"))));
        for (words, pid_file, error) in [
            (
                &["--pid-file", "p"][..],
                false,
                "unknown argument: --pid-file",
            ),
            (
                &["--workers", "0"][..],
                false,
                "--workers: not a positive integer: 0",
            ),
            (&["--bind"][..], false, "--bind needs a value"),
            (&["--help"][..], true, "usage"),
        ] {
            assert_eq!(parse(args(words), "usage", pid_file).unwrap_err(), error);
        }
    }
}
