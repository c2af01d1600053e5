//! The versions the hosts run, for the upgrade's decisions: one probe per host asks each
//! installed Kubernetes binary its version (`kube-apiserver --version` prints
//! `Kubernetes v1.31.0`). Installed binaries are what the units run once restarted, and the
//! upgrade restarts a unit right after swapping its binary, so they are the state a re-run resumes
//! from. The parser is pure and tested; the probe runs on real hosts.

use capstan_inventory::{Cluster, Role};
use capstan_provisioner::facts::ProbeSections;
use capstan_provisioner::pool::Connections;
use capstan_provisioner::targets::ssh_target;
use capstan_provisioner::transport::{ExecOptions, Transport};

use crate::paths::BIN_DIR;
use crate::skew::{KubeComponent, KubeVersion, Running};

const MARK: &str = "@@capstan:";

/// The components a host runs, by its roles.
pub fn components_of(control_plane: bool, node: bool) -> Vec<KubeComponent> {
    let mut components = Vec::new();
    if control_plane {
        components.extend([
            KubeComponent::ApiServer,
            KubeComponent::ControllerManager,
            KubeComponent::Scheduler,
        ]);
    }
    if node {
        components.extend([KubeComponent::Kubelet, KubeComponent::KubeProxy]);
    }
    components
}

/// One section per component: its `--version` output, or nothing when it is not installed.
pub fn version_script(components: &[KubeComponent]) -> String {
    let mut script = String::new();
    for component in components {
        let binary = format!("{BIN_DIR}/{}", component.name());
        script.push_str(&format!(
            "echo '{MARK}{name}'; if [ -x {binary} ]; then {binary} --version 2>&1 | head -n 1; fi\n",
            name = component.name()
        ));
    }
    script.push_str(&format!("echo '{MARK}end'\n"));
    script
}

/// The versions in [`version_script`]'s output; a component without a version (not installed)
/// is left out, one whose output does not parse is an error.
pub fn parse_versions(host: &str, components: &[KubeComponent], output: &str) -> Result<Vec<Running>, String> {
    let sections = ProbeSections::parse(output)?;
    let mut running = Vec::new();
    for component in components {
        let text = sections.get(component.name());
        if text.is_empty() {
            continue;
        }
        let version = text
            .strip_prefix("Kubernetes ")
            .and_then(KubeVersion::parse)
            .ok_or_else(|| format!("{host}: {} --version printed `{text}`", component.name()))?;
        running.push(Running::new(host, *component, version));
    }
    Ok(running)
}

/// The installed versions of the components a host with these roles runs (one exec).
pub async fn host_versions(t: &dyn Transport, control_plane: bool, node: bool) -> Result<Vec<Running>, String> {
    let components = components_of(control_plane, node);
    let output = t
        .exec(&version_script(&components), &ExecOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", t.host()))?;
    parse_versions(t.host(), &components, &output.stdout_str())
}

/// Every Kubernetes component's installed version on every `control_plane`/`node` host; every
/// such host must be reachable (a host left out could hide a skew).
pub async fn running_versions(cluster: &Cluster) -> Result<Vec<Running>, String> {
    let hosts: Vec<_> = cluster
        .hosts
        .iter()
        .filter(|h| h.has_role(Role::ControlPlane) || h.has_role(Role::Node))
        .collect();
    let targets: Vec<_> = hosts.iter().map(|h| ssh_target(h)).collect();
    let (connections, failures) = Connections::connect(&targets, 8).await;
    if !failures.is_empty() {
        connections.close_all().await;
        let list: Vec<String> = failures.iter().map(|(h, e)| format!("{h} ({e})")).collect();
        return Err(format!("cannot reach {}", list.join(", ")));
    }
    let mut running = Vec::new();
    let mut result = Ok(());
    for host in hosts {
        let transport = connections.get(&host.name).expect("every host was connected");
        match host_versions(
            transport.as_ref(),
            host.has_role(Role::ControlPlane),
            host.has_role(Role::Node),
        )
        .await
        {
            Ok(found) => running.extend(found),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    connections.close_all().await;
    result.map(|_| running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_the_binaries_output() {
        let all = components_of(true, true);
        let script = version_script(&all);
        assert!(script.contains("/usr/local/bin/kube-apiserver --version"), "{script}");
        let output =
            "@@capstan:kube-apiserver\nKubernetes v1.31.0\n@@capstan:kube-controller-manager\nKubernetes v1.31.0\n\
                      @@capstan:kube-scheduler\nKubernetes v1.30.4\n@@capstan:kubelet\n@@capstan:kube-proxy\n\
                      Kubernetes v1.31.0\n@@capstan:end\n";
        let running = parse_versions("cp1", &all, output).unwrap();
        let shown: Vec<String> = running
            .iter()
            .map(|r| format!("{} {} {}", r.host, r.component, r.version))
            .collect();
        assert_eq!(
            shown,
            [
                "cp1 kube-apiserver 1.31.0",
                "cp1 kube-controller-manager 1.31.0",
                "cp1 kube-scheduler 1.30.4",
                "cp1 kube-proxy 1.31.0",
            ]
        );
        let bad = "@@capstan:kubelet\n/usr/local/bin/kubelet: Exec format error\n@@capstan:kube-proxy\n@@capstan:end\n";
        let err = parse_versions("n1", &components_of(false, true), bad).unwrap_err();
        assert!(
            err.contains("n1: kubelet --version printed `/usr/local/bin/kubelet: Exec format error`"),
            "{err}"
        );
        assert!(
            parse_versions("n1", &all, "@@capstan:kubelet\nKubernetes v1.31.0\n").is_err(),
            "truncated"
        );
        assert_eq!(components_of(false, false), []);
    }
}
