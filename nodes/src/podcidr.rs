//! Pod subnets: each host that runs pods gets one `/node_prefix` of the cluster's pod CIDR, and
//! keeps it for as long as it is in the inventory.
//!
//! The assignment is pure: the hosts, the network settings and the assignments already made go in,
//! the full assignment comes out. Hosts keep their subnet; hosts gone from the inventory free
//! theirs; new hosts (in inventory order) get the lowest free subnet. A recorded subnet that no
//! longer fits the inventory's network (the pod CIDR or prefix changed under running nodes) is
//! refused rather than silently renumbered.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;

/// host name → its pod subnet.
pub type PodSubnets = BTreeMap<String, Ipv4Net>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("invalid pod network {cidr}/{prefix}: {reason}")]
    InvalidNetwork { cidr: String, prefix: u8, reason: String },
    #[error(
        "{host} has pod subnet {subnet}, which is not a /{prefix} inside the pod network {pod_cidr}; renumbering a \
         running node's pods is not done automatically"
    )]
    Outside {
        host: String,
        subnet: Ipv4Net,
        pod_cidr: Ipv4Net,
        prefix: u8,
    },
    #[error("{first} and {second} both have pod subnet {subnet}")]
    Duplicate {
        first: String,
        second: String,
        subnet: Ipv4Net,
    },
    #[error("the pod network {pod_cidr} has no free /{prefix} left for {host} ({used} in use)")]
    Exhausted {
        host: String,
        pod_cidr: Ipv4Net,
        prefix: u8,
        used: usize,
    },
}

/// The pod network as settings: `pod_cidr` split into `/prefix` subnets.
pub fn parse_network(pod_cidr: &str, prefix: u8) -> Result<Ipv4Net, AllocError> {
    let invalid = |reason: String| AllocError::InvalidNetwork {
        cidr: pod_cidr.to_string(),
        prefix,
        reason,
    };
    let net: Ipv4Net = pod_cidr.parse().map_err(|e| invalid(format!("{e}")))?;
    if net.trunc() != net {
        return Err(invalid("host bits are set".into()));
    }
    if prefix < net.prefix_len() || prefix > 30 {
        return Err(invalid(format!("node prefix must be from {} to 30", net.prefix_len())));
    }
    Ok(net)
}

/// Every host in `hosts` with a subnet: the ones in `existing` keep theirs, new ones get the
/// lowest free one. Entries of `existing` for hosts not in `hosts` are dropped.
pub fn allocate(
    pod_cidr: Ipv4Net,
    prefix: u8,
    hosts: &[String],
    existing: &PodSubnets,
) -> Result<PodSubnets, AllocError> {
    let mut assigned = PodSubnets::new();
    let mut owners: BTreeMap<Ipv4Net, &str> = BTreeMap::new();
    for host in hosts {
        let Some(subnet) = existing.get(host) else { continue };
        if subnet.prefix_len() != prefix || !pod_cidr.contains(subnet) || subnet.trunc() != *subnet {
            return Err(AllocError::Outside {
                host: host.clone(),
                subnet: *subnet,
                pod_cidr,
                prefix,
            });
        }
        if let Some(first) = owners.insert(*subnet, host) {
            return Err(AllocError::Duplicate {
                first: first.to_string(),
                second: host.clone(),
                subnet: *subnet,
            });
        }
        assigned.insert(host.clone(), *subnet);
    }
    let used: BTreeSet<Ipv4Net> = owners.keys().copied().collect();
    let mut free = pod_cidr
        .subnets(prefix)
        .map_err(|e| AllocError::InvalidNetwork {
            cidr: pod_cidr.to_string(),
            prefix,
            reason: e.to_string(),
        })?
        .filter(|subnet| !used.contains(subnet));
    for host in hosts {
        if assigned.contains_key(host) {
            continue;
        }
        match free.next() {
            Some(subnet) => {
                assigned.insert(host.clone(), subnet);
            }
            None => {
                return Err(AllocError::Exhausted {
                    host: host.clone(),
                    pod_cidr,
                    prefix,
                    used: assigned.len(),
                })
            }
        }
    }
    Ok(assigned)
}

/// Merge what capstan recorded with what hosts' own configuration says: the record wins; a host
/// whose subnet is only on the host (the record was lost, e.g. etcd restored from an older
/// backup) keeps it unless the record gave that subnet to another host.
pub fn merge_observed(recorded: &PodSubnets, observed: &PodSubnets) -> PodSubnets {
    let mut merged = recorded.clone();
    let taken: BTreeSet<Ipv4Net> = recorded.values().copied().collect();
    for (host, subnet) in observed {
        if !merged.contains_key(host) && !taken.contains(subnet) {
            merged.insert(host.clone(), *subnet);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn subnets(pairs: &[(&str, &str)]) -> PodSubnets {
        pairs.iter().map(|(h, s)| (h.to_string(), net(s))).collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[allow(clippy::type_complexity)]
    #[test]
    fn allocation_table() {
        // (hosts, existing, expected or error prefix)
        let cases: Vec<(&[&str], &[(&str, &str)], Result<&[(&str, &str)], &str>)> = vec![
            // A fresh cluster: in inventory order.
            (
                &["a", "b", "c"],
                &[],
                Ok(&[("a", "10.244.0.0/24"), ("b", "10.244.1.0/24"), ("c", "10.244.2.0/24")]),
            ),
            // Adding a host changes nobody else's subnet.
            (
                &["a", "b", "new"],
                &[("a", "10.244.0.0/24"), ("b", "10.244.1.0/24")],
                Ok(&[("a", "10.244.0.0/24"), ("b", "10.244.1.0/24"), ("new", "10.244.2.0/24")]),
            ),
            // Removing one frees its subnet; the others keep theirs, a newcomer takes the gap.
            (
                &["a", "c", "d"],
                &[("a", "10.244.0.0/24"), ("b", "10.244.1.0/24"), ("c", "10.244.2.0/24")],
                Ok(&[("a", "10.244.0.0/24"), ("c", "10.244.2.0/24"), ("d", "10.244.1.0/24")]),
            ),
            // Reordering the inventory changes nothing.
            (
                &["b", "a"],
                &[("a", "10.244.0.0/24"), ("b", "10.244.1.0/24")],
                Ok(&[("a", "10.244.0.0/24"), ("b", "10.244.1.0/24")]),
            ),
            // A record from another network is refused, not renumbered.
            (&["a"], &[("a", "10.99.0.0/24")], Err("a has pod subnet 10.99.0.0/24")),
            (&["a"], &[("a", "10.244.0.0/25")], Err("a has pod subnet 10.244.0.0/25")),
            (
                &["a", "b"],
                &[("a", "10.244.3.0/24"), ("b", "10.244.3.0/24")],
                Err("a and b both have pod subnet 10.244.3.0/24"),
            ),
        ];
        for (hosts, existing, expected) in cases {
            let got = allocate(net("10.244.0.0/16"), 24, &names(hosts), &subnets(existing));
            match expected {
                Ok(pairs) => assert_eq!(got, Ok(subnets(pairs)), "{hosts:?} {existing:?}"),
                Err(prefix) => {
                    let error = got.unwrap_err().to_string();
                    assert!(error.starts_with(prefix), "{error}");
                }
            }
        }
    }

    #[test]
    fn a_full_network_is_an_error() {
        let error = allocate(net("10.0.0.0/23"), 24, &names(&["a", "b", "c"]), &PodSubnets::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the pod network 10.0.0.0/23 has no free /24 left for c (2 in use)"
        );
    }

    #[test]
    fn networks_are_checked() {
        assert!(parse_network("10.244.0.0/16", 24).is_ok());
        assert!(parse_network("10.244.1.0/16", 24).is_err());
        assert!(parse_network("10.244.0.0/16", 8).is_err());
        assert!(parse_network("nonsense", 24).is_err());
    }

    #[test]
    fn the_record_wins_and_fills_from_hosts() {
        let recorded = subnets(&[("a", "10.244.0.0/24")]);
        let observed = subnets(&[("a", "10.244.5.0/24"), ("b", "10.244.1.0/24"), ("c", "10.244.0.0/24")]);
        assert_eq!(
            merge_observed(&recorded, &observed),
            subnets(&[("a", "10.244.0.0/24"), ("b", "10.244.1.0/24")])
        );
    }
}
