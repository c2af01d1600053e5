//! Every config file and unit capstan writes, as minijinja templates embedded in the binary.
//!
//! Templates live in `templates/files/` and are compiled into the binary with `include_str!`, so a
//! capstan binary never depends on files next to it. Rendering is strict: an undefined variable is an
//! error, not an empty string, so a missing context field can never silently produce a broken config.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// (name, source) of every embedded template. Adding a template is adding a line here.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "lab/test-unit.service",
        include_str!("../files/lab/test-unit.service.j2"),
    ),
    ("lab/motd", include_str!("../files/lab/motd.j2")),
    (
        "lab/standin-apiserver.service",
        include_str!("../files/lab/standin-apiserver.service.j2"),
    ),
    ("etcd/etcd.conf.yml", include_str!("../files/etcd/etcd.conf.yml.j2")),
    ("etcd/etcd.service", include_str!("../files/etcd/etcd.service.j2")),
    (
        "backup/capstan-backup.service",
        include_str!("../files/backup/capstan-backup.service.j2"),
    ),
    (
        "backup/capstan-backup.timer",
        include_str!("../files/backup/capstan-backup.timer.j2"),
    ),
    (
        "backup/capstan-state-push.service",
        include_str!("../files/backup/capstan-state-push.service.j2"),
    ),
    (
        "backup/capstan-state-push.path",
        include_str!("../files/backup/capstan-state-push.path.j2"),
    ),
    (
        "backup/capstan-state-push.timer",
        include_str!("../files/backup/capstan-state-push.timer.j2"),
    ),
    (
        "drill/capstan-drill.service",
        include_str!("../files/drill/capstan-drill.service.j2"),
    ),
    (
        "drill/capstan-drill.timer",
        include_str!("../files/drill/capstan-drill.timer.j2"),
    ),
    ("endpoint/haproxy.cfg", include_str!("../files/endpoint/haproxy.cfg.j2")),
    (
        "endpoint/keepalived.conf",
        include_str!("../files/endpoint/keepalived.conf.j2"),
    ),
    (
        "endpoint/check-endpoint.sh",
        include_str!("../files/endpoint/check-endpoint.sh.j2"),
    ),
    (
        "nodes/containerd.service",
        include_str!("../files/nodes/containerd.service.j2"),
    ),
    (
        "nodes/containerd-config.toml",
        include_str!("../files/nodes/containerd-config.toml.j2"),
    ),
    (
        "nodes/registry-hosts.toml",
        include_str!("../files/nodes/registry-hosts.toml.j2"),
    ),
    (
        "nodes/crun-lab-cgroupless",
        include_str!("../files/nodes/crun-lab-cgroupless.j2"),
    ),
    (
        "nodes/modules-load.conf",
        include_str!("../files/nodes/modules-load.conf.j2"),
    ),
    ("nodes/sysctl.conf", include_str!("../files/nodes/sysctl.conf.j2")),
    ("nodes/cni.conflist", include_str!("../files/nodes/cni.conflist.j2")),
    ("nodes/pod-network.sh", include_str!("../files/nodes/pod-network.sh.j2")),
    (
        "nodes/capstan-pod-network.service",
        include_str!("../files/nodes/capstan-pod-network.service.j2"),
    ),
    (
        "monitoring/node_exporter.service",
        include_str!("../files/monitoring/node_exporter.service.j2"),
    ),
    (
        "monitoring/prometheus.service",
        include_str!("../files/monitoring/prometheus.service.j2"),
    ),
    (
        "monitoring/prometheus.yml",
        include_str!("../files/monitoring/prometheus.yml.j2"),
    ),
    (
        "kubernetes/kubeconfig.yaml",
        include_str!("../files/kubernetes/kubeconfig.yaml.j2"),
    ),
    (
        "kubernetes/encryption-config.yaml",
        include_str!("../files/kubernetes/encryption-config.yaml.j2"),
    ),
    (
        "kubernetes/kube-apiserver.service",
        include_str!("../files/kubernetes/kube-apiserver.service.j2"),
    ),
    (
        "kubernetes/kube-controller-manager.service",
        include_str!("../files/kubernetes/kube-controller-manager.service.j2"),
    ),
    (
        "kubernetes/kube-scheduler.service",
        include_str!("../files/kubernetes/kube-scheduler.service.j2"),
    ),
    (
        "kubernetes/kube-scheduler.yaml",
        include_str!("../files/kubernetes/kube-scheduler.yaml.j2"),
    ),
    (
        "kubernetes/kubelet.service",
        include_str!("../files/kubernetes/kubelet.service.j2"),
    ),
    (
        "kubernetes/kubelet-config.yaml",
        include_str!("../files/kubernetes/kubelet-config.yaml.j2"),
    ),
    (
        "kubernetes/kube-proxy.service",
        include_str!("../files/kubernetes/kube-proxy.service.j2"),
    ),
    (
        "kubernetes/kube-proxy-config.yaml",
        include_str!("../files/kubernetes/kube-proxy-config.yaml.j2"),
    ),
    (
        "kubernetes/audit-policy.yaml",
        include_str!("../files/kubernetes/audit-policy.yaml.j2"),
    ),
    (
        "monitoring/alertmanager.service",
        include_str!("../files/monitoring/alertmanager.service.j2"),
    ),
    (
        "monitoring/alertmanager.yml",
        include_str!("../files/monitoring/alertmanager.yml.j2"),
    ),
    (
        "monitoring/alertmanager-default.tmpl",
        include_str!("../files/monitoring/alertmanager-default.tmpl.j2"),
    ),
    (
        "monitoring/alertmanager-email.tmpl",
        include_str!("../files/monitoring/alertmanager-email.tmpl.j2"),
    ),
    ("monitoring/rules.yml", include_str!("../files/monitoring/rules.yml.j2")),
    (
        "monitoring/capstan-cert-expiry.sh",
        include_str!("../files/monitoring/capstan-cert-expiry.sh.j2"),
    ),
    (
        "monitoring/capstan-cert-expiry.service",
        include_str!("../files/monitoring/capstan-cert-expiry.service.j2"),
    ),
    (
        "monitoring/capstan-cert-expiry.timer",
        include_str!("../files/monitoring/capstan-cert-expiry.timer.j2"),
    ),
    (
        "logging/journald.conf",
        include_str!("../files/logging/journald.conf.j2"),
    ),
    (
        "logging/capstan-journal-upload@.service",
        include_str!("../files/logging/capstan-journal-upload@.service.j2"),
    ),
    ("logging/upload.env", include_str!("../files/logging/upload.env.j2")),
    (
        "logging/capstan-journal-remote@.service",
        include_str!("../files/logging/capstan-journal-remote@.service.j2"),
    ),
    ("logging/remote.env", include_str!("../files/logging/remote.env.j2")),
    ("logging/haproxy.cfg", include_str!("../files/logging/haproxy.cfg.j2")),
    (
        "logging/capstan-logging-tls.service",
        include_str!("../files/logging/capstan-logging-tls.service.j2"),
    ),
    ("logging/vacuum.sh", include_str!("../files/logging/vacuum.sh.j2")),
    (
        "logging/capstan-journal-vacuum.service",
        include_str!("../files/logging/capstan-journal-vacuum.service.j2"),
    ),
    (
        "logging/capstan-journal-vacuum.timer",
        include_str!("../files/logging/capstan-journal-vacuum.timer.j2"),
    ),
    ("logging/lag.sh", include_str!("../files/logging/lag.sh.j2")),
    (
        "logging/capstan-logging-lag.service",
        include_str!("../files/logging/capstan-logging-lag.service.j2"),
    ),
    (
        "logging/capstan-logging-lag.timer",
        include_str!("../files/logging/capstan-logging-lag.timer.j2"),
    ),
    (
        "logging/alerts.rules.yml",
        include_str!("../files/logging/alerts.rules.yml.j2"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("no embedded template named `{0}`")]
    Unknown(String),
    #[error("rendering template `{name}`: {source:#}")]
    Render { name: String, source: minijinja::Error },
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_syntax(
        SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("static syntax config is valid"),
    );
    for (name, source) in TEMPLATES {
        // The sources are compile-time constants; a syntax error is caught by the `all_templates_parse` test.
        env.add_template(name, source).expect("embedded template parses");
    }
    env
}

/// Render the embedded template `name` with `context`.
pub fn render<S: Serialize>(name: &str, context: S) -> Result<String, TemplateError> {
    let env = environment();
    let template = env
        .get_template(name)
        .map_err(|_| TemplateError::Unknown(name.to_string()))?;
    template.render(Serde(context)).map_err(|source| TemplateError::Render {
        name: name.to_string(),
        source,
    })
}

/// Names of every embedded template.
pub fn names() -> impl Iterator<Item = &'static str> {
    TEMPLATES.iter().map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_templates_parse() {
        let env = environment();
        for name in names() {
            env.get_template(name).unwrap();
        }
    }

    #[test]
    fn undefined_variable_is_an_error() {
        let err = render("lab/motd", serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("lab/motd"), "{err}");
    }

    #[test]
    fn unknown_template_is_an_error() {
        assert!(matches!(render("nope", ()), Err(TemplateError::Unknown(_))));
    }
}
