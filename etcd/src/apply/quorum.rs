//! Pure membership arithmetic: quorum sizes, and whether a sequence of membership changes keeps
//! quorum throughout.

pub(super) fn quorum(size: usize) -> usize {
    size / 2 + 1
}

/// Checks that a sequence of membership changes never leaves the cluster without quorum.
/// `size`/`healthy` describe the cluster now; adds come first (each new member counts as healthy
/// once it has joined), then removes (`removes_healthy[i]` says whether the i-th removed member is
/// healthy now). Returns why not, when not.
pub fn check_quorum(size: usize, healthy: usize, adds: usize, removes_healthy: &[bool]) -> Result<(), String> {
    let (mut size, mut healthy) = (size, healthy);
    if healthy < quorum(size) {
        return Err(format!(
            "only {healthy} of {size} members are healthy; the cluster has no quorum ({} needed), so no membership change can be made safely",
            quorum(size)
        ));
    }
    for _ in 0..adds {
        // While the new member starts, it counts toward the size but not yet toward the healthy.
        // Growing a single member is the exception etcd itself makes: there is no other way up.
        if healthy < quorum(size + 1) && !(size == 1 && healthy == 1) {
            return Err(format!(
                "adding a member to {size} members of which {healthy} are healthy needs {} healthy members while it joins; bring the down members back first",
                quorum(size + 1)
            ));
        }
        size += 1;
        healthy += 1;
    }
    for removed_healthy in removes_healthy {
        let remaining_healthy = healthy - usize::from(*removed_healthy);
        if remaining_healthy < quorum(size - 1) {
            return Err(format!(
                "removing a member from {size} members ({healthy} healthy) leaves {remaining_healthy} healthy of {}, below the quorum of {}",
                size - 1,
                quorum(size - 1)
            ));
        }
        size -= 1;
        healthy = remaining_healthy;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_rules() {
        // (size, healthy, adds, removes (healthy?)) → allowed?
        let cases: &[(usize, usize, usize, &[bool], bool)] = &[
            (3, 3, 0, &[], true),
            (3, 3, 2, &[], true),
            (5, 5, 0, &[true, true], true),
            (5, 5, 0, &[true, true, true], true),
            (3, 2, 0, &[false], true),
            (3, 2, 0, &[true], false),
            (3, 2, 1, &[], false),
            (5, 4, 0, &[false, true], true),
            (5, 3, 0, &[true], false),
            (3, 1, 0, &[], false),
            (1, 1, 2, &[], true),
        ];
        for &(size, healthy, adds, removes, ok) in cases {
            let result = check_quorum(size, healthy, adds, removes);
            assert_eq!(result.is_ok(), ok, "{size} {healthy} {adds} {removes:?}: {result:?}");
        }
        let why = check_quorum(3, 2, 0, &[true]).unwrap_err();
        assert_eq!(
            why,
            "removing a member from 3 members (2 healthy) leaves 1 healthy of 2, below the quorum of 2"
        );
    }
}
