//! The one piece of code that runs between `fork` and `exec`: placing the inherited
//! descriptors and executing the next generation.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::{dup_cloexec_above, OsSignal};

/// The environment variable the child's pid is written into, between fork and exec.
const LISTEN_PID: &str = "LISTEN_PID";

/// What a spawned generation receives across `exec`: descriptors placed at 3, 4, ... and a
/// complete environment in which `LISTEN_PID` is filled in with the child's own pid.
///
/// The `pre_exec` step ends with `execve` itself rather than returning to `Command`, which
/// would use `execvp`: on `ENOEXEC` (a file that is not a program) `execvp` runs the file with
/// `/bin/sh`, where `execve` fails and the spawn reports "exec format error".
pub(crate) struct ExecPlan {
    /// Close-on-exec duplicates, numbered above the target range so `dup2` never clobbers one.
    sources: Vec<OwnedFd>,
    /// The program, `argv` and the environment strings (`KEY=VALUE`): stable heap allocations.
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    /// `LISTEN_PID=` followed by room for the digits of a pid and a NUL.
    pid_slot: Box<[u8; 32]>,
    /// NULL-terminated pointers into `args`, and into `env` and `pid_slot`.
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// The signal the child gets when this process dies (`PR_SET_PDEATHSIG`), if any.
    parent_death: Option<OsSignal>,
}

// SAFETY: the raw pointers in `argv` and `envp` point into heap allocations owned by the same
// struct (`args`, `env`, `pid_slot`), which do not move when the struct moves. They are only
// dereferenced by `execve` in the forked child, where this process memory is a private copy.
unsafe impl Send for ExecPlan {}
// SAFETY: as above; the parent never reads or writes through the pointers.
unsafe impl Sync for ExecPlan {}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in an argument"))
}

impl ExecPlan {
    /// Plans to run `program` with `args` (`argv[0]` first), `fds` as descriptors 3.., and
    /// `env` (without `LISTEN_PID`) plus `LISTEN_PID=<child pid>` as its whole environment.
    /// The child leads a process group of its own (so that it and every descendant can be
    /// signalled at once) and, with `parent_death`, gets that signal when this process dies.
    pub(crate) fn new(
        program: &Path,
        args: &[OsString],
        fds: &[BorrowedFd<'_>],
        env: Vec<(OsString, OsString)>,
        parent_death: Option<OsSignal>,
    ) -> io::Result<Self> {
        let first_free = 3 + fds.len() as RawFd;
        let sources = fds
            .iter()
            .map(|fd| dup_cloexec_above(fd.as_fd(), first_free))
            .collect::<io::Result<Vec<_>>>()?;
        let program = c_string(program.as_os_str().as_bytes())?;
        let args = args
            .iter()
            .map(|a| c_string(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let env = env
            .into_iter()
            .filter(|(k, _)| k != LISTEN_PID)
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c_string(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut pid_slot = Box::new([0u8; 32]);
        pid_slot[..LISTEN_PID.len()].copy_from_slice(LISTEN_PID.as_bytes());
        pid_slot[LISTEN_PID.len()] = b'=';
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|s| s.as_ptr()).collect();
        envp.push(pid_slot.as_ptr().cast());
        envp.push(std::ptr::null());
        Ok(ExecPlan {
            sources,
            program,
            args,
            env,
            pid_slot,
            argv,
            envp,
            parent_death,
        })
    }

    /// Installs the plan as `cmd`'s `pre_exec` step, which executes the program itself.
    /// `cmd` supplies the working directory and standard streams.
    pub(crate) fn install(self, cmd: &mut Command) {
        let prefix = LISTEN_PID.len() + 1;
        let mut plan = self;
        let pre_exec = move || -> io::Result<()> {
            // Use the plan as a whole, so the closure owns it (and its Send/Sync impls).
            let this = &mut plan;
            // Runs in the forked child: only async-signal-safe calls, no allocation.
            for (target, source) in (3..).zip(this.sources.iter()) {
                // SAFETY: both numbers are valid descriptors in the child (the sources were
                // inherited across fork; every source is numbered above every target, so no
                // earlier dup2 closed it). dup2 clears close-on-exec on the target.
                if unsafe { libc::dup2(source.as_raw_fd(), target) } == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // SAFETY: setpgid is a plain async-signal-safe system call; (0, 0) makes this
            // process the leader of a new group. It cannot fail for a freshly forked child.
            unsafe { libc::setpgid(0, 0) };
            if let Some(signal) = this.parent_death {
                // SAFETY: prctl(PR_SET_PDEATHSIG) is a plain system call that only records the
                // signal number in the calling process; async-signal-safe.
                let rc = unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0)
                };
                if rc == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // SAFETY: getpid is async-signal-safe and cannot fail.
            let pid = unsafe { libc::getpid() };
            write_decimal(&mut this.pid_slot[prefix..], pid as u32);
            let first_free = 3 + this.sources.len() as libc::c_uint;
            // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets the close-on-exec flag on
            // every descriptor above the ones we pass, so stray descriptors that some library
            // opened without the flag do not leak into the new generation. Errors (an old
            // kernel) are ignored: it is hygiene, not correctness. The std error-report pipe is
            // already close-on-exec, so it is unaffected.
            unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    first_free,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
            }
            // `args` and `env` own the strings `argv` and `envp` point to.
            let _ = (&this.args, &this.env);
            // SAFETY: execve is async-signal-safe. `program` is NUL-terminated; `argv` and
            // `envp` are NULL-terminated arrays of NUL-terminated strings owned by the plan,
            // which lives in this closure until exec replaces the process image. It returns
            // only on failure, which `Command` reports to the parent as the spawn error.
            unsafe {
                libc::execve(
                    this.program.as_ptr(),
                    this.argv.as_ptr(),
                    this.envp.as_ptr(),
                );
            }
            Err(io::Error::last_os_error())
        };
        // SAFETY: the closure above only performs async-signal-safe operations (dup2, setpgid,
        // prctl, getpid, close_range, execve, plain memory writes into pre-allocated buffers) and does not
        // allocate, lock or panic (`write_decimal` indexes within a 32-byte buffer sized for
        // any u32).
        unsafe {
            cmd.pre_exec(pre_exec);
        }
    }
}

/// Writes `n` in decimal followed by a NUL into `buf` without allocating.
fn write_decimal(buf: &mut [u8], mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_written_with_nul() {
        let mut buf = [0xffu8; 11];
        write_decimal(&mut buf, 4_294_967_295);
        assert_eq!(&buf, b"4294967295\0");
        write_decimal(&mut buf, 0);
        assert_eq!(&buf[..2], b"0\0");
    }
}
