//! capstan's record of the pod subnets, kept in the cluster's own etcd (always there: every
//! inventory has etcd members) under one key, as JSON `{"host": "10.244.1.0/24", ...}`.
//!
//! The operator reaches etcd as `apply`, `status` and backups do: the CA is read over SSH from a
//! member and a short-lived admin client certificate is issued in memory.

use std::time::Duration;

use capstan_etcd::client::{error_chain, EtcdClient, EtcdEndpoint, EtcdTls, Timeouts};
use capstan_etcd::inspect::{admin_tls, fetch_ca, inspect_hosts, EtcdHost};
use capstan_inventory::Cluster;

use crate::podcidr::PodSubnets;

/// The key of the record.
pub const POD_SUBNETS_KEY: &str = "/capstan/nodes/pod-subnets";

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot reach etcd for the pod subnet record: {0}")]
    Etcd(String),
    #[error("the pod subnet record in etcd ({POD_SUBNETS_KEY}) is unreadable: {0}")]
    Corrupt(String),
}

/// A connection to etcd for the record.
pub struct Records {
    client: EtcdClient,
}

impl Records {
    /// Connect with the CA read from the members.
    pub async fn connect(cluster: &Cluster, limit: Duration) -> Result<Records, RecordError> {
        let etcd = |e: &dyn std::error::Error| RecordError::Etcd(error_chain(e));
        let (hosts, conns) = inspect_hosts(cluster, 8, Some(limit)).await.map_err(|e| etcd(&e))?;
        let ca = fetch_ca(&hosts).await;
        conns.close_all().await;
        let tls: EtcdTls = admin_tls(&ca.map_err(|e| etcd(&e))?).map_err(|e| etcd(&e))?;
        let endpoints: Vec<EtcdEndpoint> = hosts
            .iter()
            .filter(|h| h.transport.is_some())
            .map(EtcdHost::operator_endpoint)
            .collect();
        let timeouts = Timeouts {
            connect: limit,
            request: limit,
            health: limit,
            reconfig_settle: limit,
        };
        let client = EtcdClient::connect_with(&endpoints, &tls, timeouts)
            .await
            .map_err(|e| etcd(&e))?;
        Ok(Records { client })
    }

    pub async fn read(&self) -> Result<PodSubnets, RecordError> {
        let value = self
            .client
            .get(POD_SUBNETS_KEY)
            .await
            .map_err(|e| RecordError::Etcd(error_chain(&e)))?;
        match value {
            None => Ok(PodSubnets::new()),
            Some(bytes) => decode(&bytes),
        }
    }

    pub async fn write(&self, subnets: &PodSubnets) -> Result<(), RecordError> {
        self.client
            .put(POD_SUBNETS_KEY, &encode(subnets))
            .await
            .map_err(|e| RecordError::Etcd(error_chain(&e)))
    }
}

pub fn encode(subnets: &PodSubnets) -> Vec<u8> {
    let map: std::collections::BTreeMap<&str, String> =
        subnets.iter().map(|(h, s)| (h.as_str(), s.to_string())).collect();
    serde_json::to_vec(&map).unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Result<PodSubnets, RecordError> {
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(bytes).map_err(|e| RecordError::Corrupt(e.to_string()))?;
    map.into_iter()
        .map(|(host, subnet)| {
            let parsed = subnet
                .parse()
                .map_err(|_| RecordError::Corrupt(format!("{host}: `{subnet}` is not an IPv4 network")))?;
            Ok((host, parsed))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips() {
        let subnets: PodSubnets = [("a".to_string(), "10.244.0.0/24".parse().unwrap())].into();
        assert_eq!(encode(&subnets), br#"{"a":"10.244.0.0/24"}"#);
        assert_eq!(decode(&encode(&subnets)).unwrap(), subnets);
        assert!(decode(b"{\"a\": \"x\"}").is_err());
        assert!(decode(b"[").is_err());
    }
}
