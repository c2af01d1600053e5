//! The pod subnets as `capstan status` reports them: capstan's record in etcd, per host that runs
//! pods.

use std::time::Duration;

use capstan_inventory::Cluster;
use serde::Serialize;

use crate::apply::pod_hosts;
use crate::records::{RecordError, Records};

#[derive(Debug, Clone, Serialize)]
pub struct PodSubnetRow {
    pub host: String,
    /// None: not assigned yet (`capstan apply` assigns it).
    pub pod_subnet: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodNetworkStatus {
    pub pod_cidr: String,
    pub node_prefix: u8,
    pub nodes: Vec<PodSubnetRow>,
    /// Hosts in the record that are no longer in the inventory.
    pub not_in_inventory: Vec<String>,
}

/// The record, against the inventory's hosts.
pub async fn pod_network_status(cluster: &Cluster, limit: Duration) -> Result<PodNetworkStatus, RecordError> {
    let records = Records::connect(cluster, limit).await?;
    let recorded = records.read().await?;
    let hosts = pod_hosts(cluster);
    Ok(PodNetworkStatus {
        pod_cidr: cluster.network.pod_cidr.clone(),
        node_prefix: cluster.network.node_prefix,
        nodes: hosts
            .iter()
            .map(|h| PodSubnetRow {
                host: h.name.clone(),
                pod_subnet: recorded.get(&h.name).map(|s| s.to_string()),
            })
            .collect(),
        not_in_inventory: recorded
            .keys()
            .filter(|name| !hosts.iter().any(|h| &h.name == *name))
            .cloned()
            .collect(),
    })
}
