//! Generic PKI: an ECDSA P-256 certificate authority, and the server, peer and client
//! certificates it signs. A component decides which CA it needs, what to call it and which client
//! identities it knows; nothing here is specific to one service.
//!
//! The CA key is generated once and then reused on every run ([`CertificateAuthority::from_pem`]);
//! leaf certificates are re-issued only when [`needs_reissue`] says the one on disk no longer fits
//! the request. Everything here is pure (no I/O), with the current time passed in, so every
//! decision is unit-tested.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Lifetime of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of server, peer and client certificates.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf certificate expiring within this window is re-issued, whatever its total lifetime.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start being valid this long before issue, so a host whose clock is slightly
/// behind the operator's still accepts a freshly issued certificate.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a key pair: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("signing the certificate for `{common_name}`: {source}")]
    Signing { common_name: String, source: rcgen::Error },
    #[error("the CA private key is not a valid PEM-encoded ECDSA P-256 key: {0}")]
    InvalidCaKey(rcgen::Error),
    #[error("the CA certificate is not a valid PEM-encoded X.509 certificate: {0}")]
    InvalidCaCertificate(String),
    #[error("the CA certificate is not a CA (basicConstraints CA:TRUE missing)")]
    NotACa,
    #[error("the CA private key does not belong to the CA certificate")]
    CaKeyMismatch,
    #[error("invalid DNS name `{name}` in subject alternative names: {reason}")]
    InvalidDnsName { name: String, reason: String },
    #[error("invalid common name: must be non-empty")]
    EmptyCommonName,
}

/// What a certificate is used for; decides its extended key usages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// A service's client-facing listener: serverAuth.
    Server,
    /// Member-to-member traffic of a clustered service, where every member is both TLS server and
    /// TLS client: serverAuth + clientAuth.
    Peer,
    /// A client of a service (capstan itself, another service, a backup job): clientAuth.
    Client,
}

impl CertKind {
    fn extended_key_usages(self) -> ExtendedKeyUsages {
        match self {
            CertKind::Server => ExtendedKeyUsages {
                server_auth: true,
                client_auth: false,
            },
            CertKind::Peer => ExtendedKeyUsages {
                server_auth: true,
                client_auth: true,
            },
            CertKind::Client => ExtendedKeyUsages {
                server_auth: false,
                client_auth: true,
            },
        }
    }
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// An IP SAN when `host` parses as an IP address, a DNS SAN otherwise.
    pub fn from_host(host: &str) -> San {
        match host.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(host.to_string()),
        }
    }

    /// DNS names compare case-insensitively.
    fn normalized(&self) -> San {
        match self {
            San::Dns(name) => San::Dns(name.to_ascii_lowercase()),
            San::Ip(ip) => San::Ip(*ip),
        }
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(name) => write!(f, "DNS:{name}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// The subject organization of a certificate whose request names none.
pub const DEFAULT_ORGANIZATION: &str = "capstan";

/// What a certificate should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    pub kind: CertKind,
    pub common_name: String,
    pub sans: Vec<San>,
    /// The subject's organization (O); [`DEFAULT_ORGANIZATION`] when `None`. Services that map
    /// O to a group (Kubernetes) ask for a specific one.
    pub organization: Option<String>,
}

impl CertRequest {
    /// The SANs a cluster member's certificate needs: its name, every address it has, and the
    /// loopback names so local tools (command-line clients on the host, health checks) can
    /// verify it.
    pub fn member(kind: CertKind, member_name: &str, addresses: &[&str]) -> CertRequest {
        let mut sans: Vec<San> = vec![San::Dns(member_name.to_string())];
        sans.extend(addresses.iter().map(|address| San::from_host(address)));
        sans.push(San::Dns("localhost".to_string()));
        sans.push(San::Ip(IpAddr::from([127, 0, 0, 1])));
        let mut seen = BTreeSet::new();
        sans.retain(|san| seen.insert(san.normalized()));
        CertRequest {
            kind,
            common_name: member_name.to_string(),
            sans,
            organization: None,
        }
    }

    /// A client certificate (no SANs; the service identifies clients by common name).
    pub fn client(common_name: &str) -> CertRequest {
        CertRequest {
            kind: CertKind::Client,
            common_name: common_name.to_string(),
            sans: Vec::new(),
            organization: None,
        }
    }

    /// The same request with subject organization `organization`.
    pub fn with_organization(mut self, organization: &str) -> CertRequest {
        self.organization = Some(organization.to_string());
        self
    }

    fn organization(&self) -> &str {
        self.organization.as_deref().unwrap_or(DEFAULT_ORGANIZATION)
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster's CA. `Debug` never prints the key.
#[derive(Clone)]
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// A new CA whose subject is `common_name` (the component names it), valid for
    /// [`CA_VALIDITY`] from now.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        Self::generate_at(common_name, SystemTime::now())
    }

    /// A new CA valid for [`CA_VALIDITY`] from `now`.
    pub fn generate_at(common_name: &str, now: SystemTime) -> Result<Self, PkiError> {
        let common_name = common_name.to_string();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&common_name, DEFAULT_ORGANIZATION);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, now, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Signing { common_name, source })?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Load an existing CA, checking that the certificate is a CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::InvalidCaKey)?;
        let der = pem_to_der(cert_pem).map_err(PkiError::InvalidCaCertificate)?;
        let cert = parse_der(&der).map_err(PkiError::InvalidCaCertificate)?;
        if !cert.is_ca() {
            return Err(PkiError::NotACa);
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::CaKeyMismatch);
        }
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key. Callers write it 0600 and never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issue a certificate for `request`, valid for [`LEAF_VALIDITY`] from now, with a fresh key.
    pub fn issue(&self, request: &CertRequest) -> Result<IssuedCert, PkiError> {
        self.issue_at(request, SystemTime::now(), LEAF_VALIDITY)
    }

    /// Issue a certificate valid for `validity` from `now`.
    pub fn issue_at(&self, request: &CertRequest, now: SystemTime, validity: Duration) -> Result<IssuedCert, PkiError> {
        if request.common_name.trim().is_empty() {
            return Err(PkiError::EmptyCommonName);
        }
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(PkiError::InvalidCaKey)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)
            .map_err(|e| PkiError::InvalidCaCertificate(e.to_string()))?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&request.common_name, request.organization());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let usages = request.kind.extended_key_usages();
        if usages.server_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if usages.client_auth {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.subject_alt_names = request
            .sans
            .iter()
            .map(|san| match san {
                San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
                San::Dns(name) => name
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e: rcgen::Error| PkiError::InvalidDnsName {
                        name: name.clone(),
                        reason: e.to_string(),
                    }),
            })
            .collect::<Result<_, _>>()?;
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now, validity);
        let cert = params.signed_by(&key, &issuer).map_err(|source| PkiError::Signing {
            common_name: request.common_name.clone(),
            source,
        })?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A bare key pair for signing tokens (no certificate): ECDSA P-256, both halves PEM (PKCS#8
/// private key, SubjectPublicKeyInfo public key). `Debug` never prints the private key.
#[derive(Clone)]
pub struct SigningKey {
    pub key_pem: String,
    pub public_pem: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_pem", &self.public_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// A new key pair.
    pub fn generate() -> Result<SigningKey, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(PkiError::KeyGeneration)?;
        Ok(SigningKey {
            key_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        })
    }

    /// Load a key pair, checking that `public_pem` is the public half of `key_pem`.
    pub fn from_pem(key_pem: &str, public_pem: &str) -> Result<SigningKey, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(PkiError::InvalidCaKey)?;
        if key.public_key_pem().trim() != public_pem.trim() {
            return Err(PkiError::CaKeyMismatch);
        }
        Ok(SigningKey {
            key_pem: key_pem.to_string(),
            public_pem: public_pem.to_string(),
        })
    }
}

fn distinguished_name(common_name: &str, organization: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, organization);
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    let now = OffsetDateTime::from(now);
    params.not_before = now - CLOCK_SKEW_ALLOWANCE;
    params.not_after = now + validity;
}

/// Why an existing certificate must be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReissueReason {
    /// There is no certificate.
    Missing,
    /// The file is not a PEM X.509 certificate.
    Unreadable(String),
    /// Signed by another CA (e.g. the CA was regenerated).
    NotSignedByCa,
    /// Subject alternative names differ from the request (an address was added or removed).
    SansDiffer { missing: Vec<San>, unexpected: Vec<San> },
    /// The common name differs.
    CommonNameDiffers { found: String },
    /// The subject organization differs (for Kubernetes: the group).
    OrganizationDiffers { found: String },
    /// The extended key usages don't match the kind (e.g. a server cert used as peer cert).
    UsageDiffers,
    /// Not valid yet at `now`.
    NotYetValid,
    /// Expired, expiring within [`RENEW_BEFORE`], or with less than a third of its lifetime left.
    ExpiresSoon { remaining: Duration },
}

impl fmt::Display for ReissueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReissueReason::Missing => write!(f, "certificate missing"),
            ReissueReason::Unreadable(e) => write!(f, "certificate unreadable: {e}"),
            ReissueReason::NotSignedByCa => write!(f, "certificate not signed by this cluster's CA"),
            ReissueReason::SansDiffer { missing, unexpected } => {
                let list = |sans: &[San]| sans.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                write!(
                    f,
                    "subject alternative names differ (missing: [{}], unexpected: [{}])",
                    list(missing),
                    list(unexpected)
                )
            }
            ReissueReason::CommonNameDiffers { found } => write!(f, "common name is `{found}`"),
            ReissueReason::OrganizationDiffers { found } => write!(f, "organization is `{found}`"),
            ReissueReason::UsageDiffers => write!(f, "extended key usage does not match the certificate's role"),
            ReissueReason::NotYetValid => write!(f, "certificate not valid yet"),
            ReissueReason::ExpiresSoon { remaining } => {
                write!(f, "certificate expires in {} days", remaining.as_secs() / 86_400)
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct ExtendedKeyUsages {
    server_auth: bool,
    client_auth: bool,
}

/// Whether `key_pem` is the private key of the certificate `cert_pem` (false when either is unreadable).
pub fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok(der) = pem_to_der(cert_pem) else {
        return false;
    };
    parse_der(&der).is_ok_and(|cert| cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Decide whether `existing_cert_pem` still satisfies `request` under `ca` at `now`.
/// `None` means keep it.
pub fn needs_reissue(
    existing_cert_pem: Option<&str>,
    ca: &CertificateAuthority,
    request: &CertRequest,
    now: SystemTime,
) -> Option<ReissueReason> {
    let Some(existing_cert_pem) = existing_cert_pem else {
        return Some(ReissueReason::Missing);
    };
    let der = match pem_to_der(existing_cert_pem) {
        Ok(der) => der,
        Err(e) => return Some(ReissueReason::Unreadable(e)),
    };
    let cert = match parse_der(&der) {
        Ok(cert) => cert,
        Err(e) => return Some(ReissueReason::Unreadable(e)),
    };
    // The CA was validated when loaded, so failing to re-parse it here cannot happen; treating it
    // as "not signed by this CA" is the safe answer anyway.
    let Ok(ca_der) = pem_to_der(&ca.cert_pem) else {
        return Some(ReissueReason::NotSignedByCa);
    };
    let Ok(ca_cert) = parse_der(&ca_der) else {
        return Some(ReissueReason::NotSignedByCa);
    };
    if cert.issuer() != ca_cert.subject() || cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Some(ReissueReason::NotSignedByCa);
    }

    let found_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default();
    if found_cn != request.common_name {
        return Some(ReissueReason::CommonNameDiffers {
            found: found_cn.to_string(),
        });
    }
    let found_o = cert
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .unwrap_or_default();
    if found_o != request.organization() {
        return Some(ReissueReason::OrganizationDiffers {
            found: found_o.to_string(),
        });
    }

    let found_sans = match certificate_sans(&cert) {
        Ok(sans) => sans,
        Err(e) => return Some(ReissueReason::Unreadable(e)),
    };
    let wanted_sans: BTreeSet<San> = request.sans.iter().map(San::normalized).collect();
    if found_sans != wanted_sans {
        return Some(ReissueReason::SansDiffer {
            missing: wanted_sans.difference(&found_sans).cloned().collect(),
            unexpected: found_sans.difference(&wanted_sans).cloned().collect(),
        });
    }

    let found_usages = match cert.extended_key_usage() {
        Ok(Some(eku)) => ExtendedKeyUsages {
            server_auth: eku.value.server_auth,
            client_auth: eku.value.client_auth,
        },
        Ok(None) => ExtendedKeyUsages {
            server_auth: false,
            client_auth: false,
        },
        Err(e) => return Some(ReissueReason::Unreadable(e.to_string())),
    };
    if found_usages != request.kind.extended_key_usages() {
        return Some(ReissueReason::UsageDiffers);
    }

    let now = OffsetDateTime::from(now);
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return Some(ReissueReason::NotYetValid);
    }
    let remaining = duration_between(now, not_after);
    let lifetime = duration_between(not_before, not_after);
    if remaining < RENEW_BEFORE || remaining < lifetime / 3 {
        return Some(ReissueReason::ExpiresSoon { remaining });
    }
    None
}

/// `to - from`, or zero when `to` is earlier.
fn duration_between(from: OffsetDateTime, to: OffsetDateTime) -> Duration {
    Duration::try_from(to - from).unwrap_or(Duration::ZERO)
}

fn certificate_sans(cert: &X509Certificate<'_>) -> Result<BTreeSet<San>, String> {
    let mut sans = BTreeSet::new();
    let Some(extension) = cert.subject_alternative_name().map_err(|e| e.to_string())? else {
        return Ok(sans);
    };
    for name in &extension.value.general_names {
        let san = match name {
            GeneralName::DNSName(dns) => San::Dns(dns.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => San::Ip(IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("length checked"))),
                16 => San::Ip(IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("length checked"))),
                n => return Err(format!("IP address SAN of {n} bytes")),
            },
            // capstan never issues other SAN types; one showing up means the request no longer
            // matches, which the set comparison reports.
            other => San::Dns(format!("{other}")),
        };
        sans.insert(san.normalized());
    }
    Ok(sans)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("PEM: {e}"))?;
    if parsed.label != "CERTIFICATE" {
        return Err(format!("PEM block is `{}`, expected `CERTIFICATE`", parsed.label));
    }
    Ok(parsed.contents)
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("X.509: {e}"))?;
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    /// Client identities for these tests; each component defines its own.
    const ADMIN_CLIENT_CN: &str = "capstan-admin";
    const BACKUP_CLIENT_CN: &str = "capstan-backup";

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate_at("demo", t0()).unwrap()
    }

    fn peer_request() -> CertRequest {
        CertRequest::member(CertKind::Peer, "demo-1", &["10.0.0.11", "192.168.0.11"])
    }

    #[test]
    fn a_key_matches_only_its_own_certificate() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let one = ca.issue(&CertRequest::client("one")).unwrap();
        let two = ca.issue(&CertRequest::client("two")).unwrap();
        assert!(key_matches(&one.cert_pem, &one.key_pem));
        assert!(!key_matches(&one.cert_pem, &two.key_pem));
        assert!(!key_matches(&one.cert_pem, "not a key"));
        assert!(!key_matches("not a cert", &one.key_pem));
    }

    #[test]
    fn member_request_has_name_addresses_and_loopback_without_duplicates() {
        let request = CertRequest::member(CertKind::Server, "demo-1", &["127.0.0.1", "demo-1.example", "DEMO-1"]);
        let sans: Vec<String> = request.sans.iter().map(ToString::to_string).collect();
        assert_eq!(
            sans,
            ["DNS:demo-1", "IP:127.0.0.1", "DNS:demo-1.example", "DNS:localhost"]
        );
    }

    #[test]
    fn fresh_certificate_needs_no_reissue() {
        let ca = ca();
        for request in [
            peer_request(),
            CertRequest::member(CertKind::Server, "demo-1", &["10.0.0.11"]),
            CertRequest::client(ADMIN_CLIENT_CN),
        ] {
            let cert = ca.issue_at(&request, t0(), LEAF_VALIDITY).unwrap();
            assert_eq!(
                needs_reissue(Some(&cert.cert_pem), &ca, &request, t0() + DAY),
                None,
                "{request:?}"
            );
        }
    }

    #[test]
    fn missing_certificate() {
        assert_eq!(
            needs_reissue(None, &ca(), &peer_request(), t0()),
            Some(ReissueReason::Missing)
        );
    }

    #[test]
    fn garbage_is_unreadable() {
        let reason = needs_reissue(Some("not a cert"), &ca(), &peer_request(), t0());
        assert!(matches!(reason, Some(ReissueReason::Unreadable(_))), "{reason:?}");
    }

    #[test]
    fn signed_by_another_ca() {
        let other = CertificateAuthority::generate_at("demo", t0()).unwrap();
        let cert = other.issue_at(&peer_request(), t0(), LEAF_VALIDITY).unwrap();
        assert_eq!(
            needs_reissue(Some(&cert.cert_pem), &ca(), &peer_request(), t0()),
            Some(ReissueReason::NotSignedByCa)
        );
    }

    #[test]
    fn signing_keys_load_only_with_their_public_half() {
        let one = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        assert!(one.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        SigningKey::from_pem(&one.key_pem, &one.public_pem).unwrap();
        assert!(matches!(
            SigningKey::from_pem(&one.key_pem, &other.public_pem),
            Err(PkiError::CaKeyMismatch)
        ));
        assert!(!format!("{one:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_different_organization_reissues() {
        let ca = ca();
        let node = CertRequest::client("system:node:n1").with_organization("system:nodes");
        let cert = ca.issue_at(&node, t0(), LEAF_VALIDITY).unwrap();
        assert_eq!(needs_reissue(Some(&cert.cert_pem), &ca, &node, t0()), None);
        assert_eq!(
            needs_reissue(Some(&cert.cert_pem), &ca, &CertRequest::client("system:node:n1"), t0()),
            Some(ReissueReason::OrganizationDiffers {
                found: "system:nodes".into()
            })
        );
    }

    #[test]
    fn address_added_and_removed() {
        let ca = ca();
        let cert = ca.issue_at(&peer_request(), t0(), LEAF_VALIDITY).unwrap();
        let moved = CertRequest::member(CertKind::Peer, "demo-1", &["10.0.0.11", "192.168.0.99"]);
        assert_eq!(
            needs_reissue(Some(&cert.cert_pem), &ca, &moved, t0()),
            Some(ReissueReason::SansDiffer {
                missing: vec![San::Ip("192.168.0.99".parse().unwrap())],
                unexpected: vec![San::Ip("192.168.0.11".parse().unwrap())],
            })
        );
    }

    #[test]
    fn server_certificate_cannot_serve_as_peer_certificate() {
        let ca = ca();
        let server = CertRequest {
            kind: CertKind::Server,
            ..peer_request()
        };
        let cert = ca.issue_at(&server, t0(), LEAF_VALIDITY).unwrap();
        assert_eq!(
            needs_reissue(Some(&cert.cert_pem), &ca, &peer_request(), t0()),
            Some(ReissueReason::UsageDiffers)
        );
    }

    #[test]
    fn common_name_changed() {
        let ca = ca();
        let cert = ca
            .issue_at(&CertRequest::client(ADMIN_CLIENT_CN), t0(), LEAF_VALIDITY)
            .unwrap();
        assert_eq!(
            needs_reissue(Some(&cert.cert_pem), &ca, &CertRequest::client(BACKUP_CLIENT_CN), t0()),
            Some(ReissueReason::CommonNameDiffers {
                found: ADMIN_CLIENT_CN.to_string()
            })
        );
    }

    #[test]
    fn expiry_thresholds() {
        let ca = ca();
        let request = peer_request();
        let cert = ca.issue_at(&request, t0(), LEAF_VALIDITY).unwrap();
        let check = |at: SystemTime| needs_reissue(Some(&cert.cert_pem), &ca, &request, at);
        // Lifetime is 365 days + 1 hour of skew allowance; a third is ~121.7 days.
        assert_eq!(check(t0() + 240 * DAY), None);
        assert!(matches!(
            check(t0() + 245 * DAY),
            Some(ReissueReason::ExpiresSoon { .. })
        ));
        assert!(
            matches!(check(t0() + 400 * DAY), Some(ReissueReason::ExpiresSoon { remaining }) if remaining == Duration::ZERO)
        );
        assert_eq!(
            check(t0() - Duration::from_secs(2 * 3600)),
            Some(ReissueReason::NotYetValid)
        );
    }

    #[test]
    fn thirty_day_floor_applies_to_short_lived_certificates() {
        let ca = ca();
        let request = CertRequest::client(ADMIN_CLIENT_CN);
        let cert = ca.issue_at(&request, t0(), 60 * DAY).unwrap();
        // 35 days left: above both the 30-day window and a third of the lifetime (~20 days).
        assert_eq!(
            needs_reissue(Some(&cert.cert_pem), &ca, &request, t0() + 25 * DAY),
            None
        );
        // 29 days left: above a third of the lifetime (20 days) but inside the 30-day window.
        assert!(matches!(
            needs_reissue(Some(&cert.cert_pem), &ca, &request, t0() + 31 * DAY),
            Some(ReissueReason::ExpiresSoon { .. })
        ));
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = ca();
        let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let cert = loaded.issue_at(&peer_request(), t0(), LEAF_VALIDITY).unwrap();
        assert_eq!(needs_reissue(Some(&cert.cert_pem), &ca, &peer_request(), t0()), None);
    }

    #[test]
    fn ca_with_foreign_key_is_rejected() {
        let ca = ca();
        let other = CertificateAuthority::generate_at("demo", t0()).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem()),
            Err(PkiError::CaKeyMismatch)
        ));
    }

    #[test]
    fn leaf_certificate_is_not_accepted_as_ca() {
        let ca = ca();
        let leaf = ca.issue_at(&peer_request(), t0(), LEAF_VALIDITY).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem),
            Err(PkiError::NotACa)
        ));
    }

    #[test]
    fn bad_inputs_have_precise_errors() {
        let ca = ca();
        assert!(matches!(
            CertificateAuthority::from_pem("x", ca.key_pem()),
            Err(PkiError::InvalidCaCertificate(_))
        ));
        assert!(matches!(
            CertificateAuthority::from_pem(ca.cert_pem(), "x"),
            Err(PkiError::InvalidCaKey(_))
        ));
        assert!(matches!(
            ca.issue(&CertRequest::client(" ")),
            Err(PkiError::EmptyCommonName)
        ));
    }

    #[test]
    fn debug_output_redacts_private_keys() {
        let ca = ca();
        let rendered = format!("{ca:?} {:?}", ca.issue(&CertRequest::client(ADMIN_CLIENT_CN)).unwrap());
        assert!(!rendered.contains("PRIVATE KEY"), "{rendered}");
    }
}

/// One host's copy of a key pair that lives on hosts (a CA, a signing key): the public half as
/// probed, whether the secret half is there, and whether this host is one that keeps it.
#[derive(Debug, Clone, Copy)]
pub struct PairCopy<'a> {
    pub host: &'a str,
    pub public: Option<&'a str>,
    pub has_secret: bool,
    pub keeps_secret: bool,
}

/// How a key pair kept on hosts is named in refusals.
#[derive(Debug, Clone, Copy)]
pub struct PairNames<'a> {
    /// "logging CA", "service-account key".
    pub what: &'a str,
    pub public_path: &'a str,
    pub secret_path: &'a str,
    /// Which hosts keep the secret half: "control-plane host", "logging host".
    pub keeper: &'a str,
    /// What a new pair would break, for the hint when only the public half survives.
    pub new_one_breaks: &'a str,
}

/// Why a key pair kept on hosts cannot be used (message, hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRefusal {
    pub message: String,
    pub hint: String,
}

/// Where the cluster's one copy of a key pair comes from: `Some(i)` reads the secret half from
/// `copies[i]` (the first keeper holding both halves); `None` when no host has any of it, so a
/// new pair is made. Refuses when hosts hold different public halves (a cluster has one) and when
/// the public half survives somewhere but no keeper has the secret (a new pair would break
/// everything the old one signed).
pub fn locate_pair(copies: &[PairCopy<'_>], names: &PairNames<'_>) -> Result<Option<usize>, PairRefusal> {
    let mut publics = copies.iter().filter_map(|c| c.public.map(|p| (c.host, p)));
    if let Some((first, public)) = publics.next() {
        if let Some((other, _)) = publics.find(|(_, p)| *p != public) {
            return Err(PairRefusal {
                message: format!(
                    "hosts {first} and {other} hold different {}s in {}",
                    names.what, names.public_path
                ),
                hint: format!(
                    "a cluster has one {}: remove the stray one from the host that should not have it",
                    names.what
                ),
            });
        }
    }
    if let Some(i) = copies
        .iter()
        .position(|c| c.keeps_secret && c.public.is_some() && c.has_secret)
    {
        return Ok(Some(i));
    }
    if copies.iter().any(|c| c.public.is_some()) {
        return Err(PairRefusal {
            message: format!(
                "hosts hold the {} ({}) but no {} has its key ({})",
                names.what, names.public_path, names.keeper, names.secret_path
            ),
            hint: format!(
                "restore the key on a {} (from a backup); a new one would {}",
                names.keeper, names.new_one_breaks
            ),
        });
    }
    Ok(None)
}

#[cfg(test)]
mod pair_tests {
    use super::*;

    const NAMES: PairNames<'static> = PairNames {
        what: "logging CA",
        public_path: "/etc/ca.crt",
        secret_path: "/etc/ca.key",
        keeper: "logging host",
        new_one_breaks: "lock out every uploader",
    };

    fn copy(
        host: &'static str,
        public: Option<&'static str>,
        has_secret: bool,
        keeps_secret: bool,
    ) -> PairCopy<'static> {
        PairCopy {
            host,
            public,
            has_secret,
            keeps_secret,
        }
    }

    #[test]
    fn nobody_has_it_so_a_new_pair_is_made() {
        assert_eq!(locate_pair(&[copy("a", None, false, true)], &NAMES), Ok(None));
        assert_eq!(locate_pair(&[], &NAMES), Ok(None));
    }

    #[test]
    fn the_first_keeper_with_both_halves_is_read() {
        let copies = [
            copy("a", Some("P"), true, false),
            copy("b", Some("P"), false, true),
            copy("c", Some("P"), true, true),
            copy("d", Some("P"), true, true),
        ];
        assert_eq!(locate_pair(&copies, &NAMES), Ok(Some(2)));
    }

    #[test]
    fn different_public_halves_are_refused_naming_both_hosts() {
        let copies = [
            copy("a", Some("P"), true, true),
            copy("b", None, false, true),
            copy("c", Some("Q"), true, true),
        ];
        let refusal = locate_pair(&copies, &NAMES).unwrap_err();
        assert_eq!(
            refusal.message,
            "hosts a and c hold different logging CAs in /etc/ca.crt"
        );
    }

    #[test]
    fn a_public_half_without_a_kept_secret_is_refused() {
        // The secret on a host that does not keep it does not count.
        let copies = [copy("a", Some("P"), true, false), copy("b", None, false, true)];
        let refusal = locate_pair(&copies, &NAMES).unwrap_err();
        assert_eq!(
            refusal.message,
            "hosts hold the logging CA (/etc/ca.crt) but no logging host has its key (/etc/ca.key)"
        );
        assert!(refusal.hint.contains("lock out every uploader"), "{}", refusal.hint);
    }
}
