//! The two system calls the local platform needs that std and tokio do not wrap:
//! signalling a replica's process group, and tying a replica's life to guard's.
#![allow(unsafe_code)]

use std::io;

/// Sends `signal` to the process group led by `pid` (every replica is started
/// as the leader of its own group, so helpers it forks get the signal too).
pub(crate) fn signal_group(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::other(format!("pid {pid} out of range")))?;
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a
    // process group. pgid > 0 because it is a child's pid.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        let err = io::Error::last_os_error();
        // ESRCH: already gone, which is what we wanted.
        if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(())
        } else {
            Err(err)
        }
    }
}

/// Makes the child get SIGTERM when guard dies (even by SIGKILL), and start
/// its own process group.
///
/// Why: replicas are guard's children; if guard is SIGKILLed they would be
/// orphaned, keep their ports and serve nobody (the router died with guard).
/// With `PR_SET_PDEATHSIG` they drain and exit; a restarted guard finds nothing
/// running (`observe()` is empty) and the engine converges again by calling
/// `shift`/`revert`. Note the signal fires when the *thread* that forked the
/// child exits; tokio's worker threads live as long as the runtime, so replicas
/// must be started from async code, not from `spawn_blocking` threads.
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: getpid(2) is async-signal-safe.
    let parent = unsafe { libc::getpid() };
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe functions (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // guard may have died between fork and prctl: then the death signal
            // will never come, so do not start at all.
            if libc::getppid() != parent {
                return Err(io::Error::other("guard exited while starting the replica"));
            }
            Ok(())
        });
    }
}
