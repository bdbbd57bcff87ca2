//! Hostile load on loopback, each case bounded in count and time: slowloris and silent connections, a flood past
//! the connection cap, a thousand downloads aborted mid-body, request-smuggling shapes over a raw socket, and an
//! upstream that stalls mid-body. Each prints what it measured.
//!
//! The cases run one at a time (they share the machine's two cores and this process's file descriptors), and the
//! one that counts descriptors runs in a process of its own, where no other test opens or closes any.

mod aborts;
mod connections;
mod smuggling;
mod stall;

/// One hostile case at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Raises this process's open-file soft limit to its hard limit; answers the limit now in force.
#[cfg(unix)]
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(not(unix))]
fn raise_fd_limit() -> u64 {
    u64::MAX
}
