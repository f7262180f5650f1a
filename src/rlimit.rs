//! The open-files limit, handled as ElectrumX does: the soft limit is raised to the hard one
//! at start, and MAX_SESSIONS is lowered when even that leaves too few descriptors, so a
//! crowd of wallets can't make the server fail to open its own files.

/// Descriptors kept back for the store, the node connections and the server's listeners
/// (ElectrumX gives its DB 250 and itself 100).
const RESERVED: u64 = 350;

/// Raises the soft open-files limit to the hard limit. Returns the soft limit in force
/// afterwards, or an error saying why it could not be read or raised.
pub fn raise_open_files_limit() -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "cannot read the open files limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!(
            "cannot raise the open files limit from {} to {}: {}",
            limit.rlim_cur,
            limit.rlim_max,
            std::io::Error::last_os_error()
        ));
    }
    Ok(raised.rlim_cur)
}

/// ElectrumX's `sane_max_sessions`: MAX_SESSIONS, lowered to leave [`RESERVED`]
/// descriptors under the open-files limit.
pub fn sane_max_sessions(configured: usize, open_files_limit: u64) -> usize {
    let room = open_files_limit.saturating_sub(RESERVED);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_leave_room_for_the_server_files() {
        assert_eq!(sane_max_sessions(1000, 1024), 674);
        assert_eq!(sane_max_sessions(1000, 20_000), 1000);
        assert_eq!(sane_max_sessions(1000, 1350), 1000);
        assert_eq!(sane_max_sessions(1000, 100), 0);
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit() {
        let soft = raise_open_files_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!((soft, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
