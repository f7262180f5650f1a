//! Loopback ports for tests that must name a port before a server binds it.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before: the kernel can give the same port to two binds in a row, and a test naming several
/// services (or a server and its node) needs distinct ones.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: std::collections::BTreeSet<u16> = (0..200).map(|_| super::free_port()).collect();
        assert_eq!(ports.len(), 200);
    }
}
