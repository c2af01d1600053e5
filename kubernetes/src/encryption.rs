//! Secrets encrypted at rest: the API server's EncryptionConfiguration, with a key generated on
//! the first apply (32 random bytes, secretbox or aescbc as the inventory says).
//!
//! The file is the same on every control-plane host. Capstan generates it only when no
//! control-plane host has one; otherwise it copies the one on the first control-plane host (in
//! inventory order) that has it to the others. That is also how keys are rotated (see
//! docs/kubernetes.md): edit the file on that host, run `capstan apply`, re-write the secrets.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;

use capstan_inventory::SecretsEncryption;

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("no random numbers for a new encryption key: {0}")]
    Random(String),
    #[error(transparent)]
    Template(#[from] capstan_templates::TemplateError),
}

/// One named key. `Debug` never prints the secret.
#[derive(Clone, Serialize)]
pub struct EncryptionKey {
    pub name: String,
    pub secret: String,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl EncryptionKey {
    /// A new 256-bit key (what both secretbox and aescbc take), named `name`.
    pub fn generate(name: &str) -> Result<EncryptionKey, EncryptionError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| EncryptionError::Random(e.to_string()))?;
        Ok(EncryptionKey {
            name: name.to_string(),
            secret: STANDARD.encode(bytes),
        })
    }
}

/// The provider's name in an EncryptionConfiguration.
pub fn provider_name(provider: SecretsEncryption) -> &'static str {
    match provider {
        SecretsEncryption::Secretbox => "secretbox",
        SecretsEncryption::Aescbc => "aescbc",
    }
}

/// The EncryptionConfiguration: `provider` with `keys` (the first one encrypts, all decrypt),
/// then `identity` so secrets written before encryption was on stay readable.
pub fn render(provider: SecretsEncryption, keys: &[EncryptionKey]) -> Result<String, EncryptionError> {
    #[derive(Serialize)]
    struct Context<'a> {
        provider: &'a str,
        keys: &'a [EncryptionKey],
    }
    Ok(capstan_templates::render(
        "kubernetes/encryption-config.yaml",
        Context {
            provider: provider_name(provider),
            keys,
        },
    )?)
}

/// A new configuration with one fresh key.
pub fn generate(provider: SecretsEncryption) -> Result<String, EncryptionError> {
    render(provider, &[EncryptionKey::generate("key1")?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_encrypts_secrets_and_still_reads_plain_ones() {
        let key = EncryptionKey {
            name: "key1".into(),
            secret: "c2VjcmV0".into(),
        };
        expect_test::expect![[r##"
            # Written by capstan: encryption of secrets at rest. Holds the keys: keep it 0600, back it up
            # (capstan's backups carry it); losing it makes every secret in etcd unreadable.
            # Rotation: docs/kubernetes.md, "Encryption at rest".
            apiVersion: apiserver.config.k8s.io/v1
            kind: EncryptionConfiguration
            resources:
            - resources:
              - secrets
              providers:
              - "secretbox":
                  keys:
                  - name: "key1"
                    secret: "c2VjcmV0"
              - identity: {}
        "##]]
        .assert_eq(&render(SecretsEncryption::Secretbox, &[key]).unwrap());
    }

    #[test]
    fn generated_keys_are_256_bits_and_differ() {
        let one = EncryptionKey::generate("a").unwrap();
        let two = EncryptionKey::generate("a").unwrap();
        assert_eq!(STANDARD.decode(&one.secret).unwrap().len(), 32);
        assert_ne!(one.secret, two.secret);
        assert!(!format!("{one:?}").contains(&one.secret));
        let text = generate(SecretsEncryption::Aescbc).unwrap();
        assert!(text.contains("- \"aescbc\":"), "{text}");
    }
}
