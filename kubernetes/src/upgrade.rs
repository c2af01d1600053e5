//! The decisions of a Kubernetes version upgrade, pure and table-tested: what comes next given
//! what the cluster shows (so a re-run resumes where the last one stopped: the state is read from
//! the hosts and the API, never from a local file), how nodes are batched, and what to do after a
//! step fails (a failed step never leaves a node cordoned by capstan).
//!
//! The order (docs/upgrade.md): a backup before the first change; API servers one at a time, each
//! gated on its `/readyz`; then the controller-managers and schedulers; then the nodes in batches,
//! each node cordoned → drained (eviction API, disruption budgets respected, a timeout that stops
//! and explains rather than forcing) → upgraded → Ready → uncordoned.
//!
//! A node capstan cordons carries the annotation [`CORDON_ANNOTATION`] (value: the target
//! version). That annotation is what tells a re-run which nodes are mid-upgrade, and it keeps
//! capstan from uncordoning a node an operator had cordoned for other reasons.
//!
//! The steps that talk to hosts and to the API server are in [`crate::upgrade_run`]; the lock
//! that keeps two operators from upgrading at once is the hook [`crate::upgrade_run::UpgradeLock`].

use serde::Serialize;

use crate::skew::{plan_upgrade, KubeComponent, KubeVersion, PlannedStep, Refusal, Running};

/// Set on a node capstan cordoned for an upgrade; the value is the target version.
pub const CORDON_ANNOTATION: &str = "capstan.io/upgrade-cordoned";

/// A node as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub name: String,
    /// `status.nodeInfo.kubeletVersion`.
    pub kubelet: Option<KubeVersion>,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// [`CORDON_ANNOTATION`]'s value, when capstan cordoned it.
    pub cordoned_for: Option<String>,
}

/// What the upgrade does next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum NextStep {
    /// Back up before the first change.
    Backup,
    /// Upgrade the API server on `host`, then wait for its `/readyz`.
    ApiServer { host: String },
    /// Upgrade kube-controller-manager and kube-scheduler on `host`.
    ControlPlane {
        host: String,
        components: Vec<KubeComponent>,
    },
    /// A node capstan cordoned earlier is upgraded and Ready: uncordon it.
    Uncordon { node: String },
    /// A node capstan cordoned earlier is still at the old version (or not Ready yet): finish it
    /// (drain again — a no-op when empty —, upgrade, wait Ready, uncordon).
    FinishNode { node: String },
    /// Upgrade this batch of nodes (each: cordon, drain, upgrade, Ready, uncordon).
    Nodes { batch: Vec<String> },
    /// Everything runs the target version.
    Done,
}

/// What is known before deciding: the components' versions (from the hosts) and the nodes (from
/// the API; empty before the API servers answer).
#[derive(Debug, Clone)]
pub struct Observed {
    pub running: Vec<Running>,
    pub nodes: Vec<NodeView>,
}

/// The order of the node upgrades: nodes capstan was in the middle of come first; then the
/// others that need it, in `order` (the inventory's), control-plane nodes first so that their
/// kubelets follow their API servers early.
pub fn node_batches(
    nodes: &[NodeView],
    target: &KubeVersion,
    order: &[String],
    control_plane: &[String],
    size: usize,
) -> Vec<Vec<String>> {
    let size = size.max(1);
    let position = |name: &str| order.iter().position(|n| n == name).unwrap_or(usize::MAX);
    let mut todo: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| n.kubelet.as_ref() != Some(target) && n.cordoned_for.is_none())
        .collect();
    todo.sort_by_key(|n| (!control_plane.contains(&n.name), position(&n.name), n.name.clone()));
    todo.chunks(size)
        .map(|chunk| chunk.iter().map(|n| n.name.clone()).collect())
        .collect()
}

/// The next step of upgrading to `target`, from what the cluster shows. Refuses (before any
/// change) what the skew policy does not allow.
pub fn next_step(
    observed: &Observed,
    target: &str,
    order: &[String],
    control_plane: &[String],
    batch_size: usize,
) -> Result<NextStep, Refusal> {
    let steps = plan_upgrade(&observed.running, target)?;
    let target = KubeVersion::parse(target).expect("plan_upgrade parsed it");
    // Nothing changed yet (no component at the target, no node cordoned for it): back up first.
    let started = observed.running.iter().any(|r| r.version == target)
        || observed
            .nodes
            .iter()
            .any(|n| n.cordoned_for.as_deref() == Some(&target.to_string()));
    if !steps.is_empty() && !started {
        return Ok(NextStep::Backup);
    }
    let first = |component: KubeComponent| steps.iter().find(|s| s.component == component);
    if let Some(step) = first(KubeComponent::ApiServer) {
        return Ok(NextStep::ApiServer {
            host: step.host.clone(),
        });
    }
    if let Some(step) = steps
        .iter()
        .find(|s| matches!(s.component, KubeComponent::ControllerManager | KubeComponent::Scheduler))
    {
        let components = control_plane_components(&steps, &step.host);
        return Ok(NextStep::ControlPlane {
            host: step.host.clone(),
            components,
        });
    }
    // Nodes capstan cordoned (a stopped or interrupted run), whatever the version they were
    // cordoned for: finish them before touching more.
    if let Some(node) = observed.nodes.iter().find(|n| n.cordoned_for.is_some()) {
        let upgraded = node.kubelet.as_ref() == Some(&target) && node_done(&steps, &node.name);
        return Ok(if upgraded && node.ready {
            NextStep::Uncordon {
                node: node.name.clone(),
            }
        } else {
            NextStep::FinishNode {
                node: node.name.clone(),
            }
        });
    }
    let mut batches = node_batches(&observed.nodes, &target, order, control_plane, batch_size);
    // Hosts whose kubelet or kube-proxy still differ though the API shows the node at the target
    // (kube-proxy is not in the node's status) come next, one at a time.
    let lagging: Vec<&PlannedStep> = steps
        .iter()
        .filter(|s| matches!(s.component, KubeComponent::Kubelet | KubeComponent::KubeProxy))
        .collect();
    if batches.is_empty() {
        if let Some(step) = lagging.first() {
            batches.push(vec![step.host.clone()]);
        }
    }
    Ok(match batches.into_iter().next() {
        Some(batch) => NextStep::Nodes { batch },
        None => NextStep::Done,
    })
}

fn control_plane_components(steps: &[PlannedStep], host: &str) -> Vec<KubeComponent> {
    steps
        .iter()
        .filter(|s| {
            s.host == host && matches!(s.component, KubeComponent::ControllerManager | KubeComponent::Scheduler)
        })
        .map(|s| s.component)
        .collect()
}

/// Neither kubelet nor kube-proxy of `host` still needs a step.
fn node_done(steps: &[PlannedStep], host: &str) -> bool {
    !steps
        .iter()
        .any(|s| s.host == host && matches!(s.component, KubeComponent::Kubelet | KubeComponent::KubeProxy))
}

/// A step of one node's upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStep {
    Cordon,
    Drain,
    Upgrade,
    WaitReady,
    Uncordon,
}

/// What to do once a node's step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AfterFailure {
    /// Uncordon the node before stopping (capstan cordoned it).
    pub uncordon: bool,
    /// What the operator reads: what failed, what capstan did about it, what to do.
    pub explanation: String,
}

/// After `step` failed on `node` (whose state is `view`, read after the failure): capstan
/// uncordons what it cordoned — the node's pods that could not be evicted still run there, and a
/// node that is not Ready is kept free of new pods by its `not-ready` taint, not by a cordon — and
/// stops the upgrade; the re-run resumes from this node. A node the operator had cordoned before
/// the upgrade (no annotation) stays cordoned.
pub fn after_failure(node: &str, step: NodeStep, view: Option<&NodeView>, reason: &str) -> AfterFailure {
    let ours = view.is_some_and(|v| v.cordoned_for.is_some());
    let what = match step {
        NodeStep::Cordon => "cordoning",
        NodeStep::Drain => "draining",
        NodeStep::Upgrade => "upgrading kubelet and kube-proxy on",
        NodeStep::WaitReady => "waiting for",
        NodeStep::Uncordon => "uncordoning",
    };
    let next = match step {
        NodeStep::Drain => {
            "the pods above could not be evicted within the drain timeout (their disruption budgets do not \
             allow it now): free capacity or relax the budget, or raise the timeout, then run the upgrade again; \
             capstan never deletes pods past a disruption budget"
        }
        NodeStep::Uncordon => "run `kubectl uncordon` on it (or the upgrade again, which does it first)",
        NodeStep::WaitReady => {
            "check the kubelet's journal on the host (`journalctl -u kubelet`); run the upgrade again once it is \
             fixed: it continues with this node"
        }
        NodeStep::Cordon | NodeStep::Upgrade => {
            "fix the cause shown and run the upgrade again: it continues with this node"
        }
    };
    let uncordon = ours && step != NodeStep::Uncordon;
    let done = if uncordon {
        "; capstan uncordoned it"
    } else if ours {
        "; it is still cordoned"
    } else {
        ""
    };
    AfterFailure {
        uncordon,
        explanation: format!("{what} node {node} failed: {reason}{done}. The upgrade stopped here: {next}"),
    }
}

/// A pod a drain leaves alone: mirror pods (static pods, managed by the kubelet) and DaemonSet
/// pods (their controller would put them back at once).
pub fn drain_skips(owner_kinds: &[&str], mirror: bool) -> bool {
    mirror || owner_kinds.contains(&"DaemonSet")
}

/// Why a drain is not done at its deadline: the pods still there, each with its disruption
/// budget when one blocked its eviction.
pub fn drain_timeout_reason(node: &str, seconds: u64, blocked: &[(String, Option<String>)]) -> String {
    let pods: Vec<String> = blocked
        .iter()
        .map(|(pod, budget)| match budget {
            Some(budget) => format!("{pod} (disruption budget {budget})"),
            None => pod.clone(),
        })
        .collect();
    format!(
        "{} pod(s) still on {node} after {seconds}s: {}",
        blocked.len(),
        pods.join(", ")
    )
}

/// One step of an upgrade's order as `capstan plan` shows it (and `apply` then runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderedStep {
    pub host: String,
    /// What kind of step: `backup`, `kube-apiserver`, `control plane`, `node`.
    pub op: &'static str,
    pub summary: String,
}

/// The whole upgrade of `running` to `target`, in the order a run takes it, as if every node were
/// registered and Ready (a plan): the backup (unless a component already runs the target: a
/// resumed run), each API server with its `/readyz` gate, the controller-managers and
/// schedulers host by host, then the nodes in batches. Refuses what the policy refuses; empty
/// when everything runs `target`.
pub fn upgrade_order(
    running: &[Running],
    target: &str,
    order: &[String],
    control_plane: &[String],
    batch_size: usize,
) -> Result<Vec<OrderedStep>, Refusal> {
    let steps = plan_upgrade(running, target)?;
    let Some(first) = steps.first() else {
        return Ok(Vec::new());
    };
    let target = KubeVersion::parse(target).expect("plan_upgrade parsed it");
    let mut ordered = Vec::new();
    if !running.iter().any(|r| r.version == target) {
        ordered.push(OrderedStep {
            host: control_plane.first().unwrap_or(&first.host).clone(),
            op: "backup",
            summary: "back up etcd, the Kubernetes PKI, keys and encryption configuration before the first change"
                .into(),
        });
    }
    for step in steps.iter().filter(|s| s.component == KubeComponent::ApiServer) {
        ordered.push(OrderedStep {
            host: step.host.clone(),
            op: "kube-apiserver",
            summary: format!(
                "kube-apiserver {} → {}, restart, wait for its own /readyz (port 6444)",
                step.from, step.to
            ),
        });
    }
    let mut hosts: Vec<&str> = Vec::new();
    for step in &steps {
        if matches!(
            step.component,
            KubeComponent::ControllerManager | KubeComponent::Scheduler
        ) && !hosts.contains(&step.host.as_str())
        {
            hosts.push(&step.host);
        }
    }
    for host in hosts {
        let parts: Vec<String> = steps
            .iter()
            .filter(|s| {
                s.host == host && matches!(s.component, KubeComponent::ControllerManager | KubeComponent::Scheduler)
            })
            .map(|s| format!("{} {} → {}", s.component, s.from, s.to))
            .collect();
        ordered.push(OrderedStep {
            host: host.to_string(),
            op: "control plane",
            summary: format!("{}, restart", parts.join(" and ")),
        });
    }
    let node_steps: Vec<&PlannedStep> = steps
        .iter()
        .filter(|s| matches!(s.component, KubeComponent::Kubelet | KubeComponent::KubeProxy))
        .collect();
    let mut views: Vec<NodeView> = Vec::new();
    for step in &node_steps {
        if views.iter().any(|v| v.name == step.host) {
            continue;
        }
        let kubelet = running
            .iter()
            .find(|r| r.host == step.host && r.component == KubeComponent::Kubelet)
            .map(|r| r.version);
        views.push(NodeView {
            name: step.host.clone(),
            // Only kube-proxy lags: the API would show the node at the target already.
            kubelet: kubelet.or(Some(target)),
            ready: true,
            unschedulable: false,
            cordoned_for: None,
        });
    }
    let mut batches = node_batches(&views, &target, order, control_plane, batch_size);
    for view in &views {
        if !batches.iter().flatten().any(|n| n == &view.name) {
            batches.push(vec![view.name.clone()]);
        }
    }
    let count = batches.len();
    for (index, batch) in batches.iter().enumerate() {
        for node in batch {
            let parts: Vec<String> = node_steps
                .iter()
                .filter(|s| &s.host == node)
                .map(|s| format!("{} {} → {}", s.component, s.from, s.to))
                .collect();
            ordered.push(OrderedStep {
                host: node.clone(),
                op: "node",
                summary: format!(
                    "batch {} of {count} ({}): cordon → drain → {} → Ready → uncordon",
                    index + 1,
                    batch.join(", "),
                    parts.join(" and ")
                ),
            });
        }
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> KubeVersion {
        KubeVersion::parse(text).unwrap()
    }

    fn node(name: &str, kubelet: &str, ready: bool, cordoned_for: Option<&str>) -> NodeView {
        NodeView {
            name: name.into(),
            kubelet: Some(v(kubelet)),
            ready,
            unschedulable: cordoned_for.is_some(),
            cordoned_for: cordoned_for.map(Into::into),
        }
    }

    fn running(spec: &[(&str, KubeComponent, &str)]) -> Vec<Running> {
        spec.iter().map(|(h, c, ver)| Running::new(h, *c, v(ver))).collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    use KubeComponent::*;

    #[test]
    fn batches_put_control_plane_first_then_inventory_order() {
        let nodes = [
            node("w3", "1.31.0", true, None),
            node("w1", "1.31.0", true, None),
            node("cp1", "1.31.0", true, None),
            node("w2", "1.32.5", true, None),
            node("w4", "1.31.0", true, None),
        ];
        let order = names(&["cp1", "w1", "w2", "w3", "w4"]);
        let batches = node_batches(&nodes, &v("1.32.5"), &order, &names(&["cp1"]), 2);
        assert_eq!(batches, vec![names(&["cp1", "w1"]), names(&["w3", "w4"])]);
        assert_eq!(
            node_batches(&nodes, &v("1.32.5"), &order, &[], 0).len(),
            4,
            "size 0 means 1"
        );
    }

    fn cluster_at(api: &[&str], cm: &str, kubelets: &[(&str, &str)]) -> Vec<Running> {
        let mut r = Vec::new();
        for (i, version) in api.iter().enumerate() {
            let host = format!("cp{}", i + 1);
            r.extend(running(&[
                (&host, ApiServer, version),
                (&host, ControllerManager, cm),
                (&host, Scheduler, cm),
            ]));
        }
        for (host, version) in kubelets {
            r.extend(running(&[(host, Kubelet, version), (host, KubeProxy, version)]));
        }
        r
    }

    #[test]
    fn the_next_step_resumes_from_what_the_cluster_shows() {
        let order = names(&["cp1", "cp2", "w1", "w2"]);
        let cps = names(&["cp1", "cp2"]);
        let next = |running: Vec<Running>, nodes: Vec<NodeView>| {
            next_step(&Observed { running, nodes }, "1.32.5", &order, &cps, 1).unwrap()
        };
        let kubelets_old = [("w1", "1.31.0"), ("w2", "1.31.0")];
        let nodes_old = vec![node("w1", "1.31.0", true, None), node("w2", "1.31.0", true, None)];
        // Nothing changed yet: back up first.
        assert_eq!(
            next(
                cluster_at(&["1.31.0", "1.31.0"], "1.31.0", &kubelets_old),
                nodes_old.clone()
            ),
            NextStep::Backup
        );
        // One API server done (the backup was taken before it): the other one.
        assert_eq!(
            next(
                cluster_at(&["1.32.5", "1.31.0"], "1.31.0", &kubelets_old),
                nodes_old.clone()
            ),
            NextStep::ApiServer { host: "cp2".into() }
        );
        // API servers done: controller-manager and scheduler, host by host.
        assert_eq!(
            next(
                cluster_at(&["1.32.5", "1.32.5"], "1.31.0", &kubelets_old),
                nodes_old.clone()
            ),
            NextStep::ControlPlane {
                host: "cp1".into(),
                components: vec![ControllerManager, Scheduler]
            }
        );
        let mut half = cluster_at(&["1.32.5", "1.32.5"], "1.32.5", &kubelets_old);
        half.iter_mut()
            .filter(|r| r.host == "cp2" && r.component == Scheduler)
            .for_each(|r| r.version = v("1.31.0"));
        assert_eq!(
            next(half, nodes_old.clone()),
            NextStep::ControlPlane {
                host: "cp2".into(),
                components: vec![Scheduler]
            }
        );
        let cp_done = |kubelets: &[(&str, &str)]| cluster_at(&["1.32.5", "1.32.5"], "1.32.5", kubelets);
        // Then the nodes, one batch at a time.
        assert_eq!(
            next(cp_done(&kubelets_old), nodes_old.clone()),
            NextStep::Nodes { batch: names(&["w1"]) }
        );
        // Interrupted while w1 was cordoned and still old: finish w1 first.
        let w1_cordoned = vec![
            node("w1", "1.31.0", true, Some("1.32.5")),
            node("w2", "1.31.0", true, None),
        ];
        assert_eq!(
            next(cp_done(&kubelets_old), w1_cordoned),
            NextStep::FinishNode { node: "w1".into() }
        );
        // Upgraded but not Ready yet: finish (wait), then uncordon once Ready.
        let w1_new = [("w1", "1.32.5"), ("w2", "1.31.0")];
        let not_ready = vec![
            node("w1", "1.32.5", false, Some("1.32.5")),
            node("w2", "1.31.0", true, None),
        ];
        assert_eq!(
            next(cp_done(&w1_new), not_ready),
            NextStep::FinishNode { node: "w1".into() }
        );
        let ready = vec![
            node("w1", "1.32.5", true, Some("1.32.5")),
            node("w2", "1.31.0", true, None),
        ];
        assert_eq!(next(cp_done(&w1_new), ready), NextStep::Uncordon { node: "w1".into() });
        // A kube-proxy left behind though the kubelet is new.
        let mut proxy_left = cp_done(&[("w1", "1.32.5"), ("w2", "1.32.5")]);
        proxy_left
            .iter_mut()
            .filter(|r| r.host == "w2" && r.component == KubeProxy)
            .for_each(|r| r.version = v("1.31.0"));
        let nodes_new = vec![node("w1", "1.32.5", true, None), node("w2", "1.32.5", true, None)];
        assert_eq!(
            next(proxy_left, nodes_new.clone()),
            NextStep::Nodes { batch: names(&["w2"]) }
        );
        assert_eq!(
            next(cp_done(&[("w1", "1.32.5"), ("w2", "1.32.5")]), nodes_new),
            NextStep::Done
        );
        // An operator's cordon (no annotation) is not capstan's to lift: the node is upgraded in
        // its batch like the others and stays cordoned.
        let operator_cordoned = vec![
            NodeView {
                unschedulable: true,
                ..node("w1", "1.31.0", true, None)
            },
            node("w2", "1.31.0", true, None),
        ];
        assert_eq!(
            next(cp_done(&kubelets_old), operator_cordoned),
            NextStep::Nodes { batch: names(&["w1"]) }
        );
    }

    #[test]
    fn refusals_come_before_any_step() {
        let observed = Observed {
            running: cluster_at(&["1.31.0"], "1.31.0", &[("w1", "1.31.0")]),
            nodes: vec![],
        };
        let refusal = next_step(&observed, "1.33.0", &[], &[], 1).unwrap_err();
        assert!(refusal.to_string().contains("skips 1.32"), "{refusal}");
    }

    #[test]
    fn after_a_failure_capstan_uncordons_what_it_cordoned_and_explains() {
        let ours = node("w1", "1.31.0", true, Some("1.32.5"));
        let operators = NodeView {
            unschedulable: true,
            ..node("w1", "1.31.0", true, None)
        };
        let cases: &[(NodeStep, Option<&NodeView>, bool, &str)] = &[
            (NodeStep::Drain, Some(&ours), true, "draining node w1 failed: 2 pod(s) still on w1 after 300s: default/web-0 (disruption budget default/web), kube-system/coredns-x; capstan uncordoned it. The upgrade stopped here: the pods above could not be evicted"),
            (NodeStep::Upgrade, Some(&ours), true, "upgrading kubelet and kube-proxy on node w1 failed: R; capstan uncordoned it."),
            (NodeStep::WaitReady, Some(&ours), true, "waiting for node w1 failed: R; capstan uncordoned it. The upgrade stopped here: check the kubelet's journal"),
            (NodeStep::Uncordon, Some(&ours), false, "uncordoning node w1 failed: R; it is still cordoned. The upgrade stopped here: run `kubectl uncordon`"),
            (NodeStep::Drain, Some(&operators), false, "draining node w1 failed: R. The upgrade stopped here"),
            (NodeStep::Cordon, None, false, "cordoning node w1 failed: R. The upgrade stopped here"),
        ];
        let drain_reason = drain_timeout_reason(
            "w1",
            300,
            &[
                ("default/web-0".into(), Some("default/web".into())),
                ("kube-system/coredns-x".into(), None),
            ],
        );
        for (step, view, uncordon, expected) in cases {
            let reason = if *step == NodeStep::Drain && view.is_some_and(|v| v.cordoned_for.is_some()) {
                drain_reason.as_str()
            } else {
                "R"
            };
            let after = after_failure("w1", *step, *view, reason);
            assert_eq!(after.uncordon, *uncordon, "{step:?}");
            assert!(
                after.explanation.starts_with(expected),
                "{step:?}:\n got: {}\nwant: {expected}",
                after.explanation
            );
        }
    }

    #[test]
    fn drains_leave_daemonset_and_mirror_pods() {
        assert!(drain_skips(&["DaemonSet"], false));
        assert!(drain_skips(&[], true));
        assert!(!drain_skips(&["ReplicaSet"], false));
        assert!(!drain_skips(&[], false));
    }

    #[test]
    fn upgrade_order_is_backup_api_servers_control_plane_then_node_batches() {
        let all =
            |host: &str, comps: &[KubeComponent], ver: &'static str| -> Vec<(String, KubeComponent, &'static str)> {
                comps.iter().map(|c| (host.to_string(), *c, ver)).collect()
            };
        let mut spec = Vec::new();
        spec.extend(all("cp1", &[ApiServer, ControllerManager, Scheduler], "1.31.0"));
        spec.extend(all(
            "cp2",
            &[ApiServer, ControllerManager, Scheduler, Kubelet, KubeProxy],
            "1.31.0",
        ));
        spec.extend(all("n1", &[Kubelet, KubeProxy], "1.31.0"));
        spec.extend(all("n2", &[Kubelet, KubeProxy], "1.31.0"));
        let running: Vec<Running> = spec.iter().map(|(h, c, ver)| Running::new(h, *c, v(ver))).collect();
        let order = names(&["cp1", "cp2", "n1", "n2"]);
        let cps = names(&["cp1", "cp2"]);
        let shown = |running: &[Running], target: &str, batch: usize| -> Vec<String> {
            upgrade_order(running, target, &order, &cps, batch)
                .unwrap()
                .iter()
                .map(|s| format!("{} {}: {}", s.host, s.op, s.summary))
                .collect()
        };
        let node_line = |host: &str, batch: &str| {
            format!(
                "{host} node: batch {batch}: cordon → drain → kubelet 1.31.0 → 1.32.5 and kube-proxy 1.31.0 → 1.32.5 → Ready → uncordon"
            )
        };
        let mut expected = vec![
            "cp1 backup: back up etcd, the Kubernetes PKI, keys and encryption configuration before the first change"
                .to_string(),
            "cp1 kube-apiserver: kube-apiserver 1.31.0 → 1.32.5, restart, wait for its own /readyz (port 6444)".into(),
            "cp2 kube-apiserver: kube-apiserver 1.31.0 → 1.32.5, restart, wait for its own /readyz (port 6444)".into(),
            "cp1 control plane: kube-controller-manager 1.31.0 → 1.32.5 and kube-scheduler 1.31.0 → 1.32.5, restart"
                .into(),
            "cp2 control plane: kube-controller-manager 1.31.0 → 1.32.5 and kube-scheduler 1.31.0 → 1.32.5, restart"
                .into(),
        ];
        let mut one_at_a_time = expected.clone();
        one_at_a_time.extend([
            node_line("cp2", "1 of 3 (cp2)"),
            node_line("n1", "2 of 3 (n1)"),
            node_line("n2", "3 of 3 (n2)"),
        ]);
        assert_eq!(shown(&running, "1.32.5", 1), one_at_a_time);
        expected.extend([
            node_line("cp2", "1 of 2 (cp2, n1)"),
            node_line("n1", "1 of 2 (cp2, n1)"),
            node_line("n2", "2 of 2 (n2)"),
        ]);
        assert_eq!(shown(&running, "1.32.5", 2), expected);

        // A resumed run (cp1's API server done): no second backup, cp1's API server skipped.
        let mut resumed = running.clone();
        resumed[0].version = v("1.32.5");
        let lines = shown(&resumed, "1.32.5", 1);
        assert!(lines[0].starts_with("cp2 kube-apiserver"), "{lines:?}");
        assert!(shown(&running, "1.31.0", 1).is_empty(), "nothing to do");

        // Out of policy: refused as a whole, nothing ordered.
        let skip = upgrade_order(&running, "1.33.0", &order, &cps, 1).unwrap_err();
        assert!(matches!(skip, Refusal::SkipsMinor { .. }), "{skip}");
        let all_new: Vec<Running> = running
            .iter()
            .map(|r| Running::new(&r.host, r.component, v("1.32.5")))
            .collect();
        let down = upgrade_order(&all_new, "1.31.0", &order, &cps, 1).unwrap_err();
        assert!(matches!(down, Refusal::MinorDowngrade { .. }), "{down}");
    }
}
