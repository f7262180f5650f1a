//! Session groups by IP subnet (ElectrumX's anti-DoS grouping): each member bears the
//! costs of the others, and a group keeps the cost of members that left, so reconnecting
//! does not reset it. Private addresses are exempt.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::services::is_private;
use crate::session::{CostGroup, SessionContext};

/// The group's name for an address: its subnet, e.g. `1.2.3.0/24`; None when private.
pub fn group_name(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> Option<String> {
    if is_private(&ip) {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(ipv4_prefix))
                .unwrap_or(0);
            format!("{}/{ipv4_prefix}", std::net::Ipv4Addr::from(bits & mask))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix))
                .unwrap_or(0);
            format!("{}/{ipv6_prefix}", std::net::Ipv6Addr::from(bits & mask))
        }
    })
}

/// One group: its live members and the cost retained from departed ones.
pub struct SessionGroup {
    name: String,
    members: Mutex<Vec<Arc<SessionContext>>>,
    retained: Mutex<f64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionGroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn members(&self) -> Vec<Arc<SessionContext>> {
        lock(&self.members).clone()
    }

    pub fn retained_cost(&self) -> f64 {
        *lock(&self.retained)
    }

    /// The live members' cost.
    pub fn session_cost(&self) -> f64 {
        lock(&self.members).iter().map(|m| m.cost()).sum()
    }
}

impl CostGroup for SessionGroup {
    fn extra_cost(&self, session_id: u64) -> f64 {
        let others: f64 = lock(&self.members)
            .iter()
            .filter(|m| m.id() != session_id)
            .map(|m| m.cost())
            .sum();
        self.retained_cost() + others
    }
}

/// All groups, by name.
#[derive(Default)]
pub struct Groups {
    groups: Mutex<BTreeMap<String, Arc<SessionGroup>>>,
}

impl Groups {
    /// Puts a new session into its subnet's group (none for private addresses).
    pub fn join(&self, session: &Arc<SessionContext>, ipv4_prefix: u8, ipv6_prefix: u8) {
        let Some(name) = group_name(session.peer().ip(), ipv4_prefix, ipv6_prefix) else {
            return;
        };
        let group = lock(&self.groups)
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(SessionGroup {
                    name,
                    members: Mutex::new(Vec::new()),
                    retained: Mutex::new(0.0),
                })
            })
            .clone();
        lock(&group.members).push(session.clone());
        session.join_group(group);
    }

    /// Removes a departing session, keeping its cost in the group.
    pub fn leave(&self, session: &SessionContext) {
        for group in lock(&self.groups).values() {
            let mut members = lock(&group.members);
            if let Some(pos) = members.iter().position(|m| m.id() == session.id()) {
                members.swap_remove(pos);
                *lock(&group.retained) += session.cost();
            }
        }
    }

    /// Refunds retained cost and forgets groups with neither cost nor members.
    pub fn decay(&self, refund: f64) {
        lock(&self.groups).retain(|_, group| {
            let mut retained = lock(&group.retained);
            *retained = (*retained - refund).max(0.0);
            *retained > 0.0 || !lock(&group.members).is_empty()
        });
    }

    pub fn snapshot(&self) -> Vec<Arc<SessionGroup>> {
        lock(&self.groups).values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<Arc<SessionGroup>> {
        lock(&self.groups).get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Protocol;
    use crate::session::cost::CostParams;
    use crate::session::SessionLimits;
    use std::time::Duration;

    fn session(id: u64, ip: &str) -> Arc<SessionContext> {
        let limits = SessionLimits {
            cost: CostParams {
                soft_limit: 1000.0,
                hard_limit: 2000.0,
                bw_cost_per_byte: 0.0,
                sleep: Duration::ZERO,
                initial_concurrent: 10,
            },
            max_send: 0,
            max_recv: 0,
            request_timeout: None,
            session_timeout: Duration::from_secs(60),
        };
        let peer = std::net::SocketAddr::new(ip.parse().unwrap(), 1000);
        SessionContext::new(id, Protocol::Tcp, peer, limits, false).0
    }

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
    }

    #[test]
    fn names_by_subnet() {
        let name = |ip: &str, v4, v6| group_name(ip.parse().unwrap(), v4, v6);
        assert_eq!(name("8.8.4.4", 24, 48).as_deref(), Some("8.8.4.0/24"));
        assert_eq!(name("8.8.4.4", 16, 48).as_deref(), Some("8.8.0.0/16"));
        assert_eq!(name("8.8.4.4", 0, 48).as_deref(), Some("0.0.0.0/0"));
        assert_eq!(name("8.8.4.4", 32, 48).as_deref(), Some("8.8.4.4/32"));
        assert_eq!(
            name("2a00:1450:4001:81c::200e", 24, 48).as_deref(),
            Some("2a00:1450:4001::/48")
        );
        assert_eq!(name("127.0.0.1", 24, 48), None);
        assert_eq!(name("192.168.1.9", 24, 48), None);
        assert_eq!(name("::1", 24, 48), None);
    }

    #[test]
    fn members_share_and_retain_costs() {
        let groups = Groups::default();
        let a = session(1, "8.8.4.4");
        let b = session(2, "8.8.4.5");
        let other = session(3, "9.9.9.9");
        let private = session(4, "10.0.0.1");
        for s in [&a, &b, &other, &private] {
            groups.join(s, 24, 48);
        }
        assert_eq!(groups.snapshot().len(), 2);
        a.bump_cost(295.0); // 5 (connection) + 295, less microseconds of decay
        assert!(near(b.extra_cost(), 300.0), "{}", b.extra_cost());
        assert_eq!(a.extra_cost(), 5.0);
        assert_eq!(other.extra_cost(), 0.0);
        assert_eq!(private.extra_cost(), 0.0);
        groups.leave(&a);
        let group = groups.get("8.8.4.0/24").unwrap();
        assert!(near(group.retained_cost(), 300.0) && group.members().len() == 1);
        assert!(
            near(b.extra_cost(), 300.0),
            "a reconnecting client keeps its cost"
        );
        groups.leave(&b);
        groups.decay(100.0);
        assert!(near(
            groups.get("8.8.4.0/24").unwrap().retained_cost(),
            205.0
        ));
        groups.leave(&other);
        groups.decay(1000.0);
        assert!(groups.snapshot().is_empty());
    }

    #[test]
    fn group_cost_throttles_members() {
        let groups = Groups::default();
        let a = session(1, "8.8.4.4");
        let b = session(2, "8.8.4.5");
        groups.join(&a, 24, 48);
        groups.join(&b, 24, 48);
        a.bump_cost(1495.0);
        b.recalc_cost();
        assert_eq!(
            b.max_concurrent(),
            5,
            "b bears a's cost of 1500: halfway to the hard limit"
        );
    }
}
