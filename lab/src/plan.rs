//! Pure naming and address allocation: no I/O, fully unit-tested.

use crate::error::{LabError, Result};

/// Longest lab name; keeps hostnames `<lab>-<i>` well under the 64-char limit.
pub const MAX_NAME_LEN: usize = 40;
/// Machines get .11 .. .(10 + MAX_HOSTS) of the lab's /24.
pub const MAX_HOSTS: usize = 200;
/// Every lab subnet is 10.231.<index>.0/24.
pub const SUBNET_PREFIX: &str = "10.231";

/// Checks a lab name: `[a-z0-9-]`, starts with a letter or digit, at most 40 chars.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(LabError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 40 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("only lowercase letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("it must not start or end with '-'");
    }
    Ok(())
}

pub fn validate_hosts(hosts: usize) -> Result<()> {
    if hosts == 0 || hosts > MAX_HOSTS {
        return Err(LabError::InvalidHostCount { hosts, max: MAX_HOSTS });
    }
    Ok(())
}

/// Picks the lowest subnet index not used by another lab nor by an address already on the host.
pub fn allocate_subnet(used_by_labs: &[u8], used_on_host: &[u8]) -> Result<u8> {
    (0..=u8::MAX)
        .find(|k| !used_by_labs.contains(k) && !used_on_host.contains(k))
        .ok_or(LabError::NoFreeSubnet)
}

/// Subnet indexes of 10.231.K.x addresses in `ip -o -4 addr` / `ip -4 route` output.
pub fn subnets_in_ip_output(output: &str) -> Vec<u8> {
    let mut found: Vec<u8> = output
        .split_whitespace()
        .filter_map(|word| {
            let rest = word.strip_prefix("10.231.")?;
            rest.split(['.', '/']).next()?.parse::<u8>().ok()
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// Everything about a lab that follows from its name, size and subnet index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPlan {
    pub subnet_index: u8,
    /// e.g. 10.231.3.0/24
    pub subnet: String,
    /// Bridge address, e.g. 10.231.3.1
    pub gateway: String,
    /// Bridge interface name, e.g. `cslab3` (interface names are limited to 15 chars).
    pub bridge: String,
    pub machines: Vec<MachinePlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachinePlan {
    /// 1-based position in the lab.
    pub index: usize,
    /// Hostname inside the machine: `<lab>-<index>`.
    pub hostname: String,
    /// Short name given to systemd-nspawn --machine, e.g. `cs3-1`; it names the veth.
    pub nspawn_name: String,
    /// Host-side veth systemd-nspawn creates: `vb-<nspawn_name>`.
    pub veth: String,
    pub ip: String,
}

pub fn plan(name: &str, hosts: usize, subnet_index: u8) -> Result<LabPlan> {
    validate_name(name)?;
    validate_hosts(hosts)?;
    let base = format!("{SUBNET_PREFIX}.{subnet_index}");
    let machines = (1..=hosts)
        .map(|index| {
            let nspawn_name = format!("cs{subnet_index}-{index}");
            MachinePlan {
                index,
                hostname: format!("{name}-{index}"),
                veth: format!("vb-{nspawn_name}"),
                nspawn_name,
                ip: format!("{base}.{}", 10 + index),
            }
        })
        .collect();
    Ok(LabPlan {
        subnet_index,
        subnet: format!("{base}.0/24"),
        gateway: format!("{base}.1"),
        bridge: format!("cslab{subnet_index}"),
        machines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        let cases: &[(&str, bool)] = &[
            ("demo", true),
            ("a", true),
            ("lab-2", true),
            ("0lab", true),
            ("", false),
            ("Demo", false),
            ("-x", false),
            ("x-", false),
            ("a_b", false),
            ("a.b", false),
            (&"x".repeat(40), true),
            (&"x".repeat(41), false),
        ];
        for (name, ok) in cases {
            assert_eq!(validate_name(name).is_ok(), *ok, "{name:?}");
        }
    }

    #[test]
    fn host_counts_are_bounded() {
        assert!(validate_hosts(0).is_err());
        assert!(validate_hosts(1).is_ok());
        assert!(validate_hosts(MAX_HOSTS).is_ok());
        assert!(validate_hosts(MAX_HOSTS + 1).is_err());
    }

    #[test]
    fn allocation_skips_used_subnets() {
        let cases: &[(&[u8], &[u8], u8)] = &[
            (&[], &[], 0),
            (&[0], &[], 1),
            (&[0, 1, 3], &[], 2),
            (&[0], &[1, 2], 3),
            (&[], &[0], 1),
        ];
        for (labs, host, want) in cases {
            assert_eq!(allocate_subnet(labs, host).unwrap(), *want, "{labs:?} {host:?}");
        }
        let all: Vec<u8> = (0..=255).collect();
        assert!(matches!(allocate_subnet(&all, &[]), Err(LabError::NoFreeSubnet)));
    }

    #[test]
    fn subnets_are_found_in_ip_output() {
        let out = "4: cslab0    inet 10.231.0.1/24 brd 10.231.0.255 scope global cslab0\n\
                   10.231.7.0/24 dev x proto kernel\n\
                   5: eth0 inet 10.2.31.4/24\n";
        assert_eq!(subnets_in_ip_output(out), vec![0, 7]);
    }

    #[test]
    fn plan_names_fit_interface_limits() {
        let p = plan(&"l".repeat(40), MAX_HOSTS, 255).unwrap();
        assert_eq!(p.bridge, "cslab255");
        assert_eq!(p.subnet, "10.231.255.0/24");
        assert_eq!(p.gateway, "10.231.255.1");
        for m in &p.machines {
            assert!(m.veth.len() <= 15, "{}", m.veth);
            assert!(p.bridge.len() <= 15);
        }
        let last = p.machines.last().unwrap();
        assert_eq!(last.veth, "vb-cs255-200");
        assert_eq!(last.ip, "10.231.255.210");
    }

    #[test]
    fn plan_is_deterministic() {
        let p = plan("demo", 2, 3).unwrap();
        assert_eq!(p, plan("demo", 2, 3).unwrap());
        let names: Vec<_> = p.machines.iter().map(|m| m.hostname.as_str()).collect();
        assert_eq!(names, ["demo-1", "demo-2"]);
        assert_eq!(p.machines[0].nspawn_name, "cs3-1");
        assert_eq!(p.machines[0].ip, "10.231.3.11");
        assert_eq!(p.machines[1].ip, "10.231.3.12");
        assert!(plan("Bad", 1, 0).is_err());
        assert!(plan("ok", 0, 0).is_err());
    }
}
