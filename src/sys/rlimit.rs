//! The open-file limit (`RLIMIT_NOFILE`). The userspace relay holds two
//! descriptors per TCP connection (six with splice pipes), so kproxy raises
//! its soft limit to the hard limit at start, as kube-proxy's userspace
//! proxier did.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The open-file limit before and after [`raise_nofile_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit before the call.
    pub before: u64,
    /// Soft limit now in force.
    pub after: u64,
    /// Hard limit (the ceiling an unprivileged process can reach).
    pub hard: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit. Never
/// lowers it. An infinite hard limit is capped at the kernel's `nr_open`
/// (1 Mi if it cannot be read), since `setrlimit` refuses more.
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let ceiling = if hard == nix::libc::RLIM_INFINITY {
        nr_open().unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft >= ceiling {
        return Ok(NofileLimit {
            before: soft,
            after: soft,
            hard,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, ceiling, hard)?;
    let (after, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NofileLimit {
        before: soft,
        after,
        hard,
    })
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_reaches_the_hard_limit_and_is_never_lowered() {
        let first = raise_nofile_limit().expect("raise");
        assert!(first.after >= first.before, "{first:?}");
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(soft, first.after);
        let again = raise_nofile_limit().expect("raise again");
        assert_eq!(again.before, again.after, "second call changes nothing: {again:?}");
    }
}
