//! The process limits a node runs into with many workers and connections: open files and
//! processes. Raised where the system allows, and named with their fix where it does not
//! (never a bare `os error 24` from deep inside).

/// Raises this process's soft limit on open files to its hard limit (what a shell's
/// `ulimit -n` would allow anyway); returns the limit now in force, if it could be read.
/// Thousands of actors and their connections need more than the common default of 1,024.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let limit = read_open_files()?;
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: setrlimit only reads the struct passed to it.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                return Some(to_u64(raised.rlim_cur));
            }
        }
        Some(to_u64(limit.rlim_cur))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The open-files limits (soft and hard), if they can be read.
#[cfg(unix)]
fn read_open_files() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
}

/// `rlim_t` is u64 on Linux but not everywhere.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn to_u64(value: libc::rlim_t) -> u64 {
    value as u64
}

/// This process's soft limit on open files, if it can be read.
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        read_open_files().map(|l| to_u64(l.rlim_cur))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// What an I/O error from starting a process or opening a socket means when it is a
/// system limit, with the fix; other errors as they are.
pub fn explain(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(code) if code == libc::EMFILE => {
            let limit = open_files_limit()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            format!(
                "this process has run out of file descriptors: the open-files limit{limit} is reached ({error}); raise it (`ulimit -n 65536` in the shell that starts Fleet, or LimitNOFILE= in its service unit), or run fewer isolated actors per node"
            )
        }
        Some(code) if code == libc::ENFILE => format!(
            "the system has run out of file descriptors ({error}); raise fs.file-max (`sysctl -w fs.file-max=...`) or run fewer workers"
        ),
        Some(code) if code == libc::EAGAIN => format!(
            "no new process could be made ({error}): the user's process limit (`ulimit -u`) or the system's (kernel.pid_max, kernel.threads-max) is reached; raise it, or run fewer isolated actors per node (actors without isolate() share a few processes)"
        ),
        Some(code) if code == libc::ENOMEM => format!(
            "out of memory starting a process ({error}); free memory, add swap or run fewer workers per node"
        ),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_with_their_fix() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let text = explain(&emfile);
        assert!(
            text.contains("open-files limit") && text.contains("ulimit -n"),
            "{text}"
        );
        let eagain = std::io::Error::from_raw_os_error(libc::EAGAIN);
        assert!(explain(&eagain).contains("ulimit -u"));
        let other = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(explain(&other), other.to_string());
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let now = raise_open_files_limit();
        assert!(now.is_some_and(|n| n > 0));
        assert_eq!(open_files_limit(), now);
    }
}
