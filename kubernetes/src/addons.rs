//! The objects capstan puts into a new cluster through the API, rendered as data (pure; golden
//! tests in `kubernetes/tests/golden/`) apart from applying them ([`crate::client`]).
//!
//! - Bootstrap RBAC: the `capstan:cluster-admins` group (the admin kubeconfig's user
//!   `capstan-admin` is in it) bound to `cluster-admin`, so the admin credential is revocable
//!   RBAC, not `system:masters`.
//! - The API server's kubelet client (`kube-apiserver-kubelet-client`) bound to
//!   `system:kubelet-api-admin`, so `kubectl logs`/`exec` reach the kubelets.
//! - `capstan:metrics-reader` (`get` on `/metrics` and `/metrics/cadvisor`) bound to the user
//!   [`MONITORING_USER`], the certificate Prometheus scrapes the control plane and kubelets with.
//! - Cluster DNS: CoreDNS equivalent to kubeadm's defaults (the same Corefile plugins, ServiceAccount
//!   and RBAC, probes, security context and resources), with capstan's choices: replicas
//!   `max(2, ⌈nodes/16⌉)`, a preferred spread over hosts (pod anti-affinity), a PodDisruptionBudget, the
//!   image from the inventory, and the Service at the inventory's DNS service IP.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, KeyToPath, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

/// The group the admin kubeconfig's user belongs to.
pub use crate::pki::ADMIN_GROUP as ADMINS_GROUP;
/// The ClusterRoleBinding granting it `cluster-admin`.
pub const ADMINS_BINDING: &str = "capstan:cluster-admins";
/// The ClusterRoleBinding of the API server's kubelet client to `system:kubelet-api-admin`.
pub const KUBELET_API_ADMIN_BINDING: &str = "capstan:kubelet-api-admin";
/// The user of the monitoring client certificate (Prometheus scraping the Kubernetes components).
pub const MONITORING_USER: &str = "capstan-monitoring";
/// The ClusterRole (and its binding to [`MONITORING_USER`]) allowing the metrics endpoints.
pub const METRICS_READER_ROLE: &str = "capstan:metrics-reader";
/// Where cluster DNS runs.
pub const DNS_NAMESPACE: &str = "kube-system";
/// CoreDNS's objects' name, and the Service's (`kube-dns`, which clients and kubelets expect).
pub const DNS_NAME: &str = "coredns";
pub const DNS_SERVICE: &str = "kube-dns";
/// The label every CoreDNS object and pod carries (kubeadm's).
pub const DNS_APP_LABEL: (&str, &str) = ("k8s-app", "kube-dns");

/// What cluster DNS needs from the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// CoreDNS image (inventory `kubernetes.dns_image`, e.g. from a mirror registry).
    pub image: String,
    /// The `kube-dns` Service's ClusterIP (kubelets' `clusterDNS`).
    pub service_ip: IpAddr,
    /// `cluster.local` by default.
    pub cluster_domain: String,
    /// Hosts that run pods (`node`/`control_plane`): sizes the replicas.
    pub nodes: usize,
}

impl DnsSettings {
    /// From the inventory: `kubernetes.dns_image`, the DNS service IP (the service network's
    /// tenth address), `kubernetes.cluster_domain`, and the hosts that run pods.
    pub fn from_cluster(cluster: &capstan_inventory::Cluster) -> DnsSettings {
        use capstan_inventory::Role;
        DnsSettings {
            image: cluster.kubernetes.dns_image.clone(),
            service_ip: IpAddr::V4(cluster.kubernetes.dns_service_ip()),
            cluster_domain: cluster.kubernetes.cluster_domain.clone(),
            nodes: cluster.hosts_with_role(Role::Node).count(),
        }
    }
}

/// `max(2, ⌈nodes/16⌉)`: two for availability, then one per 16 nodes.
pub fn dns_replicas(nodes: usize) -> i32 {
    i32::try_from(nodes.div_ceil(16).max(2)).unwrap_or(i32::MAX)
}

/// kubeadm's Corefile for `domain`.
pub fn corefile(domain: &str) -> String {
    format!(
        ".:53 {{
    errors
    health {{
       lameduck 5s
    }}
    ready
    kubernetes {domain} in-addr.arpa ip6.arpa {{
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
       max_concurrent 1000
    }}
    cache 30 {{
       disable success {domain}
       disable denial {domain}
    }}
    loop
    reload
    loadbalance
}}
"
    )
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn meta(name: &str, namespace: Option<&str>, extra_labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: (!extra_labels.is_empty()).then(|| labels(extra_labels)).flatten(),
        ..ObjectMeta::default()
    }
}

/// `capstan:cluster-admins` → `cluster-admin`.
pub fn admins_binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(ADMINS_BINDING, None, &[("app.kubernetes.io/managed-by", "capstan")]),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: ADMINS_GROUP.into(),
            namespace: None,
        }]),
    }
}

fn managed() -> ObjectMeta {
    meta("", None, &[("app.kubernetes.io/managed-by", "capstan")])
}

fn cluster_role_ref(name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "ClusterRole".into(),
        name: name.into(),
    }
}

fn user(name: &str) -> Subject {
    Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "User".into(),
        name: name.into(),
        namespace: None,
    }
}

/// `kube-apiserver-kubelet-client` → `system:kubelet-api-admin` (logs, exec, port-forward).
pub fn kubelet_api_admin_binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(KUBELET_API_ADMIN_BINDING.into()),
            ..managed()
        },
        role_ref: cluster_role_ref(crate::pki::KUBELET_API_CLUSTER_ROLE),
        subjects: Some(vec![user(crate::pki::APISERVER_KUBELET_CLIENT_USER)]),
    }
}

/// `get` on the metrics endpoints of the API server, controller-manager, scheduler and kubelets.
pub fn metrics_reader_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(METRICS_READER_ROLE.into()),
            ..managed()
        },
        rules: Some(vec![PolicyRule {
            non_resource_urls: Some(vec!["/metrics".into(), "/metrics/cadvisor".into()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }]),
        ..ClusterRole::default()
    }
}

/// [`METRICS_READER_ROLE`] → [`MONITORING_USER`].
pub fn metrics_reader_binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(METRICS_READER_ROLE.into()),
            ..managed()
        },
        role_ref: cluster_role_ref(METRICS_READER_ROLE),
        subjects: Some(vec![user(MONITORING_USER)]),
    }
}

/// One object to apply through the API, type-erased: what the client needs to address it and
/// what a plan shows.
#[derive(Debug, Clone, PartialEq)]
pub struct AddonObject {
    pub group: &'static str,
    pub version: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The resource's URL segment (`clusterrolebindings`).
    pub plural: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    /// The whole object, `apiVersion` and `kind` included.
    pub value: serde_json::Value,
}

impl AddonObject {
    pub fn of<T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize>(
        object: &T,
    ) -> AddonObject {
        let mut value = serde_json::to_value(object).expect("Kubernetes objects are plain data");
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), T::API_VERSION.into());
            map.insert("kind".into(), T::KIND.into());
        }
        AddonObject {
            group: T::GROUP,
            version: T::VERSION,
            api_version: T::API_VERSION,
            kind: T::KIND,
            plural: T::URL_PATH_SEGMENT,
            namespace: object.metadata().namespace.clone(),
            name: object.metadata().name.clone().unwrap_or_default(),
            value,
        }
    }

    /// `ClusterRoleBinding capstan:kubelet-api-admin`, `Deployment kube-system/coredns`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&self.value).expect("JSON values render as YAML")
    }
}

/// Everything capstan applies through the API, in order: the bootstrap RBAC, then CoreDNS.
pub fn bootstrap_objects(dns: &DnsSettings) -> Vec<AddonObject> {
    let dns = coredns(dns);
    vec![
        AddonObject::of(&admins_binding()),
        AddonObject::of(&kubelet_api_admin_binding()),
        AddonObject::of(&metrics_reader_role()),
        AddonObject::of(&metrics_reader_binding()),
        AddonObject::of(&dns.service_account),
        AddonObject::of(&dns.cluster_role),
        AddonObject::of(&dns.cluster_role_binding),
        AddonObject::of(&dns.config_map),
        AddonObject::of(&dns.deployment),
        AddonObject::of(&dns.service),
        AddonObject::of(&dns.disruption_budget),
    ]
}

/// CoreDNS's objects, in the order they are applied.
#[derive(Debug, Clone, Serialize)]
pub struct CoreDns {
    pub service_account: ServiceAccount,
    pub cluster_role: ClusterRole,
    pub cluster_role_binding: ClusterRoleBinding,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub disruption_budget: PodDisruptionBudget,
}

pub fn coredns(settings: &DnsSettings) -> CoreDns {
    let app = [DNS_APP_LABEL];
    let selector = LabelSelector {
        match_labels: labels(&app),
        ..LabelSelector::default()
    };
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..PolicyRule::default()
    };
    let port = |name: &str, port: i32, protocol: &str| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some(protocol.into()),
        ..ContainerPort::default()
    };
    let http_probe = |path: &str, port: i32| HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(port),
        scheme: Some("HTTP".into()),
        ..HTTPGetAction::default()
    };
    let quantities = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, Quantity>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    };
    let container = Container {
        name: DNS_NAME.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["-conf".into(), "/etc/coredns/Corefile".into()]),
        ports: Some(vec![
            port("dns", 53, "UDP"),
            port("dns-tcp", 53, "TCP"),
            port("metrics", 9153, "TCP"),
        ]),
        resources: Some(ResourceRequirements {
            limits: quantities(&[("memory", "170Mi")]),
            requests: quantities(&[("cpu", "100m"), ("memory", "70Mi")]),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "config-volume".into(),
            mount_path: "/etc/coredns".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        liveness_probe: Some(Probe {
            http_get: Some(http_probe("/health", 8080)),
            initial_delay_seconds: Some(60),
            timeout_seconds: Some(5),
            success_threshold: Some(1),
            failure_threshold: Some(5),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(http_probe("/ready", 8181)),
            ..Probe::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_BIND_SERVICE".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let anti_affinity = k8s_openapi::api::core::v1::PodAntiAffinity {
        preferred_during_scheduling_ignored_during_execution: Some(vec![
            k8s_openapi::api::core::v1::WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: k8s_openapi::api::core::v1::PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_expressions: Some(vec![
                            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                                key: DNS_APP_LABEL.0.into(),
                                operator: "In".into(),
                                values: Some(vec![DNS_APP_LABEL.1.into()]),
                            },
                        ]),
                        ..LabelSelector::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                },
            },
        ]),
        ..Default::default()
    };
    let toleration = |key: &str, effect: Option<&str>| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: effect.map(Into::into),
        ..Toleration::default()
    };
    let pod = PodSpec {
        priority_class_name: Some("system-cluster-critical".into()),
        service_account_name: Some(DNS_NAME.into()),
        tolerations: Some(vec![
            toleration("CriticalAddonsOnly", None),
            toleration("node-role.kubernetes.io/control-plane", Some("NoSchedule")),
        ]),
        node_selector: labels(&[("kubernetes.io/os", "linux")]),
        affinity: Some(k8s_openapi::api::core::v1::Affinity {
            pod_anti_affinity: Some(anti_affinity),
            ..Default::default()
        }),
        containers: vec![container],
        dns_policy: Some("Default".into()),
        volumes: Some(vec![Volume {
            name: "config-volume".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: DNS_NAME.into(),
                items: Some(vec![KeyToPath {
                    key: "Corefile".into(),
                    path: "Corefile".into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    };
    let namespace = Some(DNS_NAMESPACE);
    CoreDns {
        service_account: ServiceAccount {
            metadata: meta(DNS_NAME, namespace, &[]),
            ..ServiceAccount::default()
        },
        cluster_role: ClusterRole {
            metadata: meta(
                "system:coredns",
                None,
                &[("kubernetes.io/bootstrapping", "rbac-defaults")],
            ),
            rules: Some(vec![
                rule(
                    &[""],
                    &["endpoints", "services", "pods", "namespaces"],
                    &["list", "watch"],
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], &["list", "watch"]),
            ]),
            ..ClusterRole::default()
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: meta(
                "system:coredns",
                None,
                &[("kubernetes.io/bootstrapping", "rbac-defaults")],
            ),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "system:coredns".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: DNS_NAME.into(),
                namespace: Some(DNS_NAMESPACE.into()),
                api_group: None,
            }]),
        },
        config_map: ConfigMap {
            metadata: meta(DNS_NAME, namespace, &[]),
            data: Some(BTreeMap::from([(
                "Corefile".to_string(),
                corefile(&settings.cluster_domain),
            )])),
            ..ConfigMap::default()
        },
        deployment: Deployment {
            metadata: meta(DNS_NAME, namespace, &app),
            spec: Some(DeploymentSpec {
                replicas: Some(dns_replicas(settings.nodes)),
                selector: selector.clone(),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString::Int(1)),
                        ..RollingUpdateDeployment::default()
                    }),
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: labels(&app),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod),
                },
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        },
        service: Service {
            metadata: ObjectMeta {
                annotations: labels(&[("prometheus.io/port", "9153"), ("prometheus.io/scrape", "true")]),
                ..meta(
                    DNS_SERVICE,
                    namespace,
                    &[
                        DNS_APP_LABEL,
                        ("kubernetes.io/cluster-service", "true"),
                        ("kubernetes.io/name", "CoreDNS"),
                    ],
                )
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(settings.service_ip.to_string()),
                selector: labels(&app),
                ports: Some(vec![
                    service_port("dns", 53, "UDP"),
                    service_port("dns-tcp", 53, "TCP"),
                    service_port("metrics", 9153, "TCP"),
                ]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        },
        disruption_budget: PodDisruptionBudget {
            metadata: meta(DNS_NAME, namespace, &app),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        },
    }
}

fn service_port(name: &str, port: i32, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some(protocol.into()),
        target_port: Some(IntOrString::Int(port)),
        ..ServicePort::default()
    }
}

/// Every object as one multi-document YAML stream (with `apiVersion`/`kind`), as `kubectl apply
/// -f` would take it: what the golden tests compare, and what `capstan plan` can show.
pub fn to_yaml<T: k8s_openapi::Resource + Serialize>(object: &T) -> String {
    let mut value = serde_json::to_value(object).expect("Kubernetes objects are plain data");
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), T::API_VERSION.into());
        map.insert("kind".into(), T::KIND.into());
    }
    serde_yaml::to_string(&value).expect("JSON values render as YAML")
}

impl CoreDns {
    pub fn to_yaml(&self) -> String {
        [
            to_yaml(&self.service_account),
            to_yaml(&self.cluster_role),
            to_yaml(&self.cluster_role_binding),
            to_yaml(&self.config_map),
            to_yaml(&self.deployment),
            to_yaml(&self.service),
            to_yaml(&self.disruption_budget),
        ]
        .join("---\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_two_then_one_per_sixteen_nodes() {
        for (nodes, replicas) in [
            (0, 2),
            (1, 2),
            (16, 2),
            (32, 2),
            (33, 3),
            (48, 3),
            (49, 4),
            (160, 10),
            (161, 11),
        ] {
            assert_eq!(dns_replicas(nodes), replicas, "{nodes} nodes");
        }
    }

    #[test]
    fn corefile_has_kubeadms_plugins_in_order() {
        let corefile = corefile("example.internal");
        let plugins: Vec<&str> = corefile
            .lines()
            .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
            .map(|l| l.split_whitespace().next().unwrap())
            .filter(|w| *w != "}")
            .collect();
        assert_eq!(
            plugins,
            [
                "errors",
                "health",
                "ready",
                "kubernetes",
                "prometheus",
                "forward",
                "cache",
                "loop",
                "reload",
                "loadbalance"
            ]
        );
        assert!(corefile.contains("lameduck 5s"));
        assert!(corefile.contains("kubernetes example.internal in-addr.arpa ip6.arpa {"));
    }

    fn settings(nodes: usize) -> DnsSettings {
        DnsSettings {
            image: "mirror.example:5000/coredns/coredns:v1.11.3".into(),
            service_ip: "10.96.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            nodes,
        }
    }

    #[test]
    fn settings_come_from_the_inventory() {
        let cluster = crate::test_cluster("kubernetes: {service_cidr: 10.32.0.0/16, cluster_domain: k.example}\n");
        let dns = DnsSettings::from_cluster(&cluster);
        assert_eq!(dns.service_ip.to_string(), "10.32.0.10");
        assert_eq!(dns.cluster_domain, "k.example");
        assert_eq!(dns.image, cluster.kubernetes.dns_image);
        assert_eq!(dns.nodes, 2);
        let service = coredns(&dns).service;
        assert_eq!(service.spec.unwrap().cluster_ip.as_deref(), Some("10.32.0.10"));
    }

    #[test]
    fn coredns_golden() {
        expect_test::expect_file!["../tests/golden/coredns.yaml"].assert_eq(&coredns(&settings(40)).to_yaml());
    }

    #[test]
    fn rbac_golden() {
        let text = [
            to_yaml(&kubelet_api_admin_binding()),
            to_yaml(&metrics_reader_role()),
            to_yaml(&metrics_reader_binding()),
        ]
        .join("---\n");
        expect_test::expect_file!["../tests/golden/rbac.yaml"].assert_eq(&text);
    }

    #[test]
    fn bootstrap_objects_are_rbac_first_then_coredns_sized_for_the_nodes() {
        let objects = bootstrap_objects(&settings(40));
        let names: Vec<String> = objects.iter().map(AddonObject::describe).collect();
        assert_eq!(
            names,
            [
                "ClusterRoleBinding capstan:cluster-admins",
                "ClusterRoleBinding capstan:kubelet-api-admin",
                "ClusterRole capstan:metrics-reader",
                "ClusterRoleBinding capstan:metrics-reader",
                "ServiceAccount kube-system/coredns",
                "ClusterRole system:coredns",
                "ClusterRoleBinding system:coredns",
                "ConfigMap kube-system/coredns",
                "Deployment kube-system/coredns",
                "Service kube-system/kube-dns",
                "PodDisruptionBudget kube-system/coredns",
            ]
        );
        let deployment = &objects[8];
        assert_eq!((deployment.plural, deployment.api_version), ("deployments", "apps/v1"));
        assert_eq!(deployment.value["spec"]["replicas"], 3);
        assert_eq!(deployment.value["kind"], "Deployment");
        let budget = &objects[10];
        assert_eq!((budget.group, budget.version), ("policy", "v1"));
        assert_eq!(objects[9].value["spec"]["clusterIP"], "10.96.0.10");
    }

    #[test]
    fn kubelets_cluster_dns_is_the_dns_service() {
        let cluster = crate::test_cluster("kubernetes: {service_cidr: 10.40.0.0/16}\n");
        let host = cluster.host("n1").unwrap();
        let config = crate::config::kubelet_config(&cluster, host).unwrap();
        let dns = DnsSettings::from_cluster(&cluster).service_ip.to_string();
        assert!(config.contains(&format!("clusterDNS:\n- \"{dns}\"")), "{config}");
    }

    #[test]
    fn admins_binding_golden() {
        expect_test::expect_file!["../tests/golden/admins-binding.yaml"].assert_eq(&to_yaml(&admins_binding()));
    }
}
