//! Which endpoint a new connection (or UDP session) goes to: round robin,
//! with optional ClientIP affinity, as kube-proxy's userspace load balancer
//! (`roundrobin.go`) chose. **Pure**: the time is a parameter.
//!
//! - Round robin walks the endpoints in order; a new target set with other
//!   endpoints starts over at the first one.
//! - With affinity, a client IP keeps the endpoint it was given while it
//!   comes back within the timeout (each use renews it); an entry whose
//!   endpoint left the target set is forgotten.
//! - A failover pick (`exclude` not empty) forgets the client's affinity and
//!   takes the next endpoint not yet tried.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Entries kept before expired affinity entries are swept.
const SWEEP_AT_LEAST: usize = 1024;

/// Round-robin choice over one target set, with ClientIP affinity.
#[derive(Clone, Debug, Default)]
pub struct Balancer {
    endpoints: Vec<SocketAddr>,
    affinity: Option<Duration>,
    next: usize,
    sticky: HashMap<IpAddr, Sticky>,
    sweep_at: usize,
}

#[derive(Clone, Copy, Debug)]
struct Sticky {
    endpoint: SocketAddr,
    last_used: Instant,
}

// === impl Balancer ===

impl Balancer {
    pub fn new(endpoints: Vec<SocketAddr>, affinity: Option<Duration>) -> Self {
        Self {
            endpoints,
            affinity,
            next: 0,
            sticky: HashMap::new(),
            sweep_at: SWEEP_AT_LEAST,
        }
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    pub fn affinity(&self) -> Option<Duration> {
        self.affinity
    }

    /// Replaces the target set. The same endpoints (in any order) keep the
    /// round-robin position; otherwise it restarts. Affinity to endpoints
    /// that are gone is dropped, and all of it when affinity is turned off.
    pub fn update(&mut self, endpoints: Vec<SocketAddr>, affinity: Option<Duration>) {
        if !same_members(&self.endpoints, &endpoints) {
            self.next = 0;
        }
        if affinity.is_none() {
            self.sticky.clear();
        } else {
            self.sticky.retain(|_, s| endpoints.contains(&s.endpoint));
        }
        self.endpoints = endpoints;
        self.affinity = affinity;
    }

    /// The endpoint for a new connection from `client` at `now`, skipping
    /// `exclude` (endpoints that already failed this connection). None when
    /// no endpoint is left.
    pub fn pick(&mut self, client: IpAddr, now: Instant, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        if let Some(ttl) = self.affinity {
            if exclude.is_empty()
                && let Some(s) = self.sticky.get_mut(&client)
                && now.saturating_duration_since(s.last_used) < ttl
                && self.endpoints.contains(&s.endpoint)
            {
                s.last_used = now;
                return Some(s.endpoint);
            }
            self.sticky.remove(&client);
        }
        let chosen = self.next_round_robin(exclude)?;
        if let Some(ttl) = self.affinity {
            self.sweep(now, ttl);
            self.sticky.insert(
                client,
                Sticky {
                    endpoint: chosen,
                    last_used: now,
                },
            );
        }
        Some(chosen)
    }

    /// Client IPs currently holding affinity (expired ones may linger until
    /// the next sweep).
    pub fn sticky_clients(&self) -> usize {
        self.sticky.len()
    }

    fn next_round_robin(&mut self, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let n = self.endpoints.len();
        for _ in 0..n {
            let candidate = self.endpoints[self.next % n];
            self.next = (self.next + 1) % n;
            if !exclude.contains(&candidate) {
                return Some(candidate);
            }
        }
        None
    }

    /// Drops expired affinity entries once the table has doubled since the
    /// last sweep (amortised O(1) per pick).
    fn sweep(&mut self, now: Instant, ttl: Duration) {
        if self.sticky.len() < self.sweep_at {
            return;
        }
        self.sticky
            .retain(|_, s| now.saturating_duration_since(s.last_used) < ttl);
        self.sweep_at = (self.sticky.len() * 2).max(SWEEP_AT_LEAST);
    }
}

fn same_members(a: &[SocketAddr], b: &[SocketAddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep(n: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(198, 18, 1, n), 8080))
    }

    fn client(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 2, n))
    }

    fn picks(b: &mut Balancer, who: IpAddr, at: Instant, n: usize) -> Vec<SocketAddr> {
        (0..n).filter_map(|_| b.pick(who, at, &[])).collect()
    }

    #[test]
    fn round_robin_walks_endpoints_in_order() {
        let mut b = Balancer::new(vec![ep(1), ep(2), ep(3)], None);
        let now = Instant::now();
        assert_eq!(
            picks(&mut b, client(1), now, 5),
            vec![ep(1), ep(2), ep(3), ep(1), ep(2)]
        );
    }

    #[test]
    fn no_endpoints_means_no_pick() {
        let mut b = Balancer::new(vec![], Some(Duration::from_secs(10)));
        assert_eq!(b.pick(client(1), Instant::now(), &[]), None);
    }

    #[test]
    fn affinity_sticks_each_client_until_it_expires() {
        let ttl = Duration::from_secs(10);
        let mut b = Balancer::new(vec![ep(1), ep(2), ep(3)], Some(ttl));
        let t0 = Instant::now();
        assert_eq!(picks(&mut b, client(1), t0, 3), vec![ep(1); 3]);
        // Another client takes the next endpoint, and sticks too.
        assert_eq!(picks(&mut b, client(2), t0, 2), vec![ep(2); 2]);
        // Each use renews: 9 s after the last use is still within 10 s.
        let t1 = t0 + Duration::from_secs(9);
        assert_eq!(b.pick(client(1), t1, &[]), Some(ep(1)));
        let t2 = t1 + Duration::from_secs(9);
        assert_eq!(b.pick(client(1), t2, &[]), Some(ep(1)));
        // Idle for the whole timeout: round robin again, where it stopped.
        let t3 = t2 + ttl;
        assert_eq!(b.pick(client(1), t3, &[]), Some(ep(3)));
        assert_eq!(b.pick(client(1), t3, &[]), Some(ep(3)), "and sticks to the new one");
    }

    #[test]
    fn failover_pick_skips_tried_endpoints_and_moves_affinity() {
        let mut b = Balancer::new(vec![ep(1), ep(2), ep(3)], Some(Duration::from_secs(60)));
        let now = Instant::now();
        assert_eq!(b.pick(client(1), now, &[]), Some(ep(1)));
        assert_eq!(b.pick(client(1), now, &[ep(1)]), Some(ep(2)));
        assert_eq!(b.pick(client(1), now, &[ep(1), ep(2)]), Some(ep(3)));
        assert_eq!(b.pick(client(1), now, &[ep(1), ep(2), ep(3)]), None);
        // Nothing left: the client has no affinity; round robin goes on.
        assert_eq!(b.pick(client(1), now, &[]), Some(ep(1)));
        assert_eq!(b.pick(client(1), now, &[ep(1)]), Some(ep(2)));
        assert_eq!(
            b.pick(client(1), now, &[]),
            Some(ep(2)),
            "sticks to the endpoint that answered"
        );
    }

    #[test]
    fn new_endpoints_restart_round_robin_and_drop_affinity_to_removed_ones() {
        let mut b = Balancer::new(vec![ep(1), ep(2)], Some(Duration::from_secs(60)));
        let now = Instant::now();
        assert_eq!(b.pick(client(1), now, &[]), Some(ep(1)));
        assert_eq!(b.pick(client(2), now, &[]), Some(ep(2)));
        b.update(vec![ep(2), ep(3)], Some(Duration::from_secs(60)));
        assert_eq!(b.pick(client(2), now, &[]), Some(ep(2)), "ep(2) stayed: affinity kept");
        assert_eq!(
            b.pick(client(1), now, &[]),
            Some(ep(2)),
            "ep(1) left: round robin from the start"
        );
        // The same members in another order keep the position.
        b.update(vec![ep(3), ep(2)], None);
        assert_eq!(b.sticky_clients(), 0, "affinity off forgets everything");
        assert_eq!(b.pick(client(3), now, &[]), Some(ep(2)));
    }

    #[test]
    fn expired_affinity_entries_are_swept() {
        let ttl = Duration::from_secs(1);
        let mut b = Balancer::new(vec![ep(1)], Some(ttl));
        let t0 = Instant::now();
        for i in 0..SWEEP_AT_LEAST {
            let ip = IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i as u32));
            b.pick(ip, t0, &[]);
        }
        b.pick(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), t0 + ttl * 2, &[]);
        assert_eq!(b.sticky_clients(), 1);
    }
}
