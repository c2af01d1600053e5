//! capstan's Kubernetes client (the `kube` crate): server-side apply of the bootstrap objects
//! ([`crate::addons`]), `/readyz`, and what an upgrade needs from the API (nodes, cordon, drain
//! through the eviction API, Ready). The decisions are elsewhere ([`crate::upgrade`]); this only
//! talks to a real API server, so it is exercised by the end-to-end test (real binaries,
//! `CAPSTAN_KUBE_ARTIFACTS`), never against a stand-in.
//!
//! `kube` types stay inside: the public signatures use capstan's own types and k8s-openapi objects.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{Api, ApiResource, DynamicObject, EvictParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::addons::AddonObject;
use crate::skew::KubeVersion;
use crate::upgrade::{drain_skips, drain_timeout_reason, NodeView, CORDON_ANNOTATION};

/// The field manager of everything capstan applies.
pub const FIELD_MANAGER: &str = "capstan";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the kubeconfig: {0}")]
    Config(String),
    #[error("{what}: {reason}")]
    Api { what: String, reason: String },
    #[error("{0}")]
    Timeout(String),
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ClientError {
    let what = what.into();
    move |e| ClientError::Api {
        what,
        reason: match e {
            kube::Error::Api(response) => format!("{} ({}, {})", response.message, response.reason, response.code),
            other => other.to_string(),
        },
    }
}

/// A connection to one cluster's API.
#[derive(Clone)]
pub struct KubeClient {
    client: kube::Client,
}

impl KubeClient {
    /// From a kubeconfig's text (its current context), e.g. capstan's admin kubeconfig.
    pub async fn from_kubeconfig(yaml: &str) -> Result<KubeClient, ClientError> {
        let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|e| ClientError::Config(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let client = kube::Client::try_from(config).map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(KubeClient { client })
    }

    /// `GET /readyz?verbose`: the API server's readiness report (an error when not ready).
    pub async fn readyz(&self) -> Result<String, ClientError> {
        let request = http_get("/readyz?verbose")?;
        self.client
            .request_text(request)
            .await
            .map_err(api_error("GET /readyz"))
    }

    /// Waits until `/readyz` answers, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.readyz().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(ClientError::Timeout(format!(
                        "the API server was not ready within {}s: {e}",
                        timeout.as_secs()
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }

    /// Server-side apply of a cluster-scoped object (field manager [`FIELD_MANAGER`], conflicts
    /// forced: capstan owns what it applies).
    pub async fn apply_cluster<K>(&self, object: &K) -> Result<(), ClientError>
    where
        K: kube::Resource<Scope = ClusterResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let api: Api<K> = Api::all(self.client.clone());
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
            .await
            .map(|_| ())
            .map_err(api_error(format!("applying {} {name}", K::kind(&()))))
    }

    /// Server-side apply of a namespaced object.
    pub async fn apply_namespaced<K>(&self, object: &K) -> Result<(), ClientError>
    where
        K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let namespace = object.meta().namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
            .await
            .map(|_| ())
            .map_err(api_error(format!("applying {} {namespace}/{name}", K::kind(&()))))
    }

    /// Server-side apply of `object` (a dry run on the server when `dry_run`); true when it
    /// changed (or would change) the object: the object before and the one the server returns
    /// differ beyond the bookkeeping a no-op apply leaves alone.
    pub async fn apply_object(&self, object: &AddonObject, dry_run: bool) -> Result<bool, ClientError> {
        let resource = ApiResource {
            group: object.group.into(),
            version: object.version.into(),
            api_version: object.api_version.into(),
            kind: object.kind.into(),
            plural: object.plural.into(),
        };
        let api: Api<DynamicObject> = match &object.namespace {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let what = object.describe();
        let before = api
            .get_opt(&object.name)
            .await
            .map_err(api_error(format!("reading {what}")))?;
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        if dry_run {
            params = params.dry_run();
        }
        let after = api
            .patch(&object.name, &params, &Patch::Apply(&object.value))
            .await
            .map_err(api_error(format!("applying {what}")))?;
        Ok(before.map(|b| comparable(&b)) != Some(comparable(&after)))
    }

    /// The namespaces' names.
    pub async fn namespaces(&self) -> Result<Vec<String>, ClientError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(api_error("listing namespaces"))?;
        Ok(list.items.into_iter().filter_map(|n| n.metadata.name).collect())
    }

    /// Every node as the upgrade decisions see it.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(api_error("listing nodes"))?;
        Ok(list.items.iter().map(node_view).collect())
    }

    async fn node(&self, name: &str) -> Result<NodeView, ClientError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node = api.get(name).await.map_err(api_error(format!("reading node {name}")))?;
        Ok(node_view(&node))
    }

    /// Cordons `node` for the upgrade to `target`, marking it as capstan's
    /// ([`CORDON_ANNOTATION`]) unless someone else had cordoned it already.
    pub async fn cordon(&self, node: &str, target: &KubeVersion) -> Result<(), ClientError> {
        let current = self.node(node).await?;
        if current.unschedulable && current.cordoned_for.is_none() {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": { "annotations": { CORDON_ANNOTATION: target.to_string() } },
            "spec": { "unschedulable": true },
        });
        self.patch_node(node, &patch, "cordoning").await
    }

    async fn patch_node(&self, node: &str, patch: &serde_json::Value, what: &str) -> Result<(), ClientError> {
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch(node, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
            .map_err(api_error(format!("{what} node {node}")))
    }

    /// Uncordons `node` if capstan cordoned it (and drops the annotation).
    pub async fn uncordon(&self, node: &str) -> Result<(), ClientError> {
        let current = self.node(node).await?;
        if current.cordoned_for.is_none() {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": { "annotations": { CORDON_ANNOTATION: null } },
            "spec": { "unschedulable": false },
        });
        self.patch_node(node, &patch, "uncordoning").await
    }

    /// Evicts every pod of `node` a drain moves (not DaemonSet or mirror pods) through the
    /// eviction API, retrying those a disruption budget protects, until none is left or
    /// `timeout` passes: then stops with the pods still there (never deletes past a budget).
    pub async fn drain(&self, node: &str, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
        loop {
            let list = pods
                .list(&on_node)
                .await
                .map_err(api_error(format!("listing pods on {node}")))?;
            let movable: Vec<&Pod> = list.items.iter().filter(|p| !skipped(p)).collect();
            if movable.is_empty() {
                return Ok(());
            }
            let mut blocked = Vec::new();
            for pod in movable {
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                match api.evict(&name, &EvictParams::default()).await {
                    Ok(_) => blocked.push((format!("{namespace}/{name}"), None)),
                    Err(kube::Error::Api(response)) if response.code == 404 => {}
                    // 429: a disruption budget does not allow it now.
                    Err(kube::Error::Api(response)) if response.code == 429 => {
                        let budget = self.budget_of(pod).await;
                        blocked.push((format!("{namespace}/{name}"), budget));
                    }
                    Err(e) => return Err(api_error(format!("evicting {namespace}/{name}"))(e)),
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(drain_timeout_reason(
                    node,
                    timeout.as_secs(),
                    &blocked,
                )));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    /// The disruption budget selecting `pod`, by name (`namespace/name`).
    async fn budget_of(&self, pod: &Pod) -> Option<String> {
        let namespace = pod.metadata.namespace.clone()?;
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), &namespace);
        let budgets = api.list(&ListParams::default()).await.ok()?;
        budgets.items.into_iter().find_map(|b| {
            let selector = b.spec.as_ref()?.selector.as_ref()?;
            let matches = selector
                .match_labels
                .as_ref()
                .is_some_and(|wanted| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)));
            matches.then(|| format!("{namespace}/{}", b.metadata.name.unwrap_or_default()))
        })
    }

    /// Waits until `node` is Ready with kubelet `target`, at most `timeout`.
    pub async fn wait_node_ready(
        &self,
        node: &str,
        target: &KubeVersion,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.node(node).await;
            if let Ok(view) = &view {
                if view.ready && view.kubelet.as_ref() == Some(target) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(match view {
                    Ok(v) => format!(
                        "node {node} is not Ready at {target} after {}s (Ready: {}, kubelet: {})",
                        timeout.as_secs(),
                        v.ready,
                        v.kubelet.map(|k| k.to_string()).unwrap_or_else(|| "unknown".into())
                    ),
                    Err(e) => format!("node {node}: {e}"),
                }));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}

/// The namespaces every cluster has.
pub const EXPECTED_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// What a drill checks on a restored cluster's API: ready, the expected namespaces present, and
/// objects readable (the kube-system ConfigMaps, which every cluster has).
pub async fn drill_checks(client: &KubeClient) -> Vec<capstan_provisioner::component::CheckResult> {
    use capstan_provisioner::component::CheckResult;
    let check = |name: &str, result: Result<String, String>| CheckResult {
        name: name.into(),
        ok: result.is_ok(),
        detail: result.unwrap_or_else(|e| e),
    };
    let ready = client
        .readyz()
        .await
        .map(|_| "readyz ok".to_string())
        .map_err(|e| e.to_string());
    let namespaces = match client.namespaces().await {
        Ok(found) => {
            let missing: Vec<&str> = EXPECTED_NAMESPACES
                .iter()
                .copied()
                .filter(|n| !found.iter().any(|f| f == n))
                .collect();
            if missing.is_empty() {
                Ok(format!("{} namespaces", found.len()))
            } else {
                Err(format!("missing: {}", missing.join(", ")))
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.client.clone(), "kube-system");
    let objects = match api.list(&ListParams::default()).await {
        Ok(list) if !list.items.is_empty() => Ok(format!("{} ConfigMaps in kube-system", list.items.len())),
        Ok(_) => Err("no ConfigMap in kube-system".to_string()),
        Err(e) => Err(api_error("listing ConfigMaps")(e).to_string()),
    };
    let [api_ready, expected_namespaces, objects_readable] = crate::drill::DRILL_CHECKS;
    vec![
        check(api_ready, ready),
        check(expected_namespaces, namespaces),
        check(objects_readable, objects),
    ]
}

fn http_get(path: &str) -> Result<http::Request<Vec<u8>>, ClientError> {
    http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// An object without what changes on every write (`resourceVersion`, the managed fields'
/// timestamps), so two reads of an unchanged object compare equal.
fn comparable(object: &DynamicObject) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    strip_bookkeeping(&mut value);
    value
}

fn strip_bookkeeping(value: &mut serde_json::Value) {
    if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.remove("resourceVersion");
        if let Some(fields) = metadata.get_mut("managedFields").and_then(|f| f.as_array_mut()) {
            for field in fields.iter_mut().filter_map(|f| f.as_object_mut()) {
                field.remove("time");
            }
        }
    }
}

/// Mirror (static) pods and DaemonSet pods stay.
fn skipped(pod: &Pod) -> bool {
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    let owners: Vec<&str> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.kind.as_str())
        .collect();
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    finished || drain_skips(&owners, mirror)
}

fn node_view(node: &Node) -> NodeView {
    let status = node.status.as_ref();
    NodeView {
        name: node.metadata.name.clone().unwrap_or_default(),
        kubelet: status
            .and_then(|s| s.node_info.as_ref())
            .and_then(|i| KubeVersion::parse(&i.kubelet_version)),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
        cordoned_for: node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CORDON_ANNOTATION).cloned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_alone_is_no_change() {
        let read = |version: &str, time: &str, replicas: u32| {
            let mut value = serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "coredns", "resourceVersion": version,
                    "managedFields": [{"manager": "capstan", "operation": "Apply", "time": time}]},
                "spec": {"replicas": replicas},
            });
            strip_bookkeeping(&mut value);
            value
        };
        assert_eq!(
            read("10", "2026-12-01T10:00:00Z", 2),
            read("11", "2026-12-01T11:00:00Z", 2)
        );
        assert_ne!(
            read("10", "2026-12-01T10:00:00Z", 2),
            read("11", "2026-12-01T11:00:00Z", 3)
        );
    }
}
