//! X.509 card certificates (RFC 5280 profile subset) built on `x509-cert`.
//!
//! * [`issue_self_signed`] / [`issue_certificate`]: RSA (PKCS#1 v1.5,
//!   SHA-256) signed v3 certificates whose subject is `CN=<card id>`, with
//!   validity, key usage, basic constraints and the card-role extension
//!   ([`CARD_ROLE_OID`], a private OID).
//! * [`parse`]: DER to [`CardCertificate`].
//! * [`verify_chain`]: leaf-first chain up to a trust anchor, checking issuer
//!   names, signatures, CA flags and key usage, validity at a given time,
//!   a [`RevocationList`] of serial numbers and the leaf's role extension.
//!   Each failure is a distinct [`X509Error`] variant naming the certificate.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::rsa::pkcs1v15::{Signature as Pkcs1Signature, SigningKey};
use der::asn1::OctetString;
use der::oid::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::Sha256;
use spki::SubjectPublicKeyInfoOwned;
use thiserror::Error;
use x509_cert::Certificate;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use crate::CryptoError;
use crate::rsa::{RsaPrivateKey, RsaPublicKey};

/// Private OID of the card-role extension. It lies under the RFC 5612
/// documentation enterprise arc 1.3.6.1.4.1.32473 (reserved for examples and
/// documentation), so it cannot clash with a registered OID; the value is an
/// ASN.1 INTEGER (see [`CardRole`]).
pub const CARD_ROLE_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.7.1");

/// sha256WithRSAEncryption (RFC 4055).
pub const SHA256_WITH_RSA_OID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

const KEY_USAGE_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const BASIC_CONSTRAINTS_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// Everything certificate issuance, parsing or chain verification can
/// report. `index` is the position in the chain (0 = leaf); the trust
/// anchor has index `chain.len()`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum X509Error {
    /// The DER could not be decoded / encoded.
    #[error("malformed certificate DER: {0}")]
    Der(String),
    /// `verify_chain` got no certificate.
    #[error("empty certificate chain")]
    EmptyChain,
    /// `now` is before notBefore.
    #[error("certificate {index} is not yet valid (notBefore {not_before} s since epoch)")]
    NotYetValid {
        /// Chain position.
        index: usize,
        /// notBefore, seconds since the Unix epoch.
        not_before: u64,
    },
    /// `now` is after notAfter.
    #[error("certificate {index} has expired (notAfter {not_after} s since epoch)")]
    Expired {
        /// Chain position.
        index: usize,
        /// notAfter, seconds since the Unix epoch.
        not_after: u64,
    },
    /// The signature does not verify under the issuer's key.
    #[error("certificate {index}: signature does not verify with the issuer's key")]
    BadSignature {
        /// Chain position.
        index: usize,
    },
    /// The certificate's issuer name is not its issuer's subject name.
    #[error(
        "certificate {index}: issuer '{found}' does not match issuer certificate subject '{expected}'"
    )]
    IssuerMismatch {
        /// Chain position.
        index: usize,
        /// Subject of the next certificate (or anchor).
        expected: String,
        /// Issuer field found.
        found: String,
    },
    /// The certificate's serial number is on the revocation list.
    #[error("certificate {index} is revoked (serial {serial})")]
    Revoked {
        /// Chain position.
        index: usize,
        /// Serial number, hex.
        serial: String,
    },
    /// The leaf lacks the card-role extension.
    #[error("certificate {index} lacks the card-role extension")]
    MissingRoleExtension {
        /// Chain position.
        index: usize,
    },
    /// The card-role extension does not decode to a known role.
    #[error("certificate {index}: malformed or unknown card-role extension")]
    BadRoleExtension {
        /// Chain position.
        index: usize,
    },
    /// An issuing certificate is not a CA (basicConstraints cA missing/false).
    #[error("certificate {index} issues others but is not a CA")]
    IssuerNotCa {
        /// Chain position.
        index: usize,
    },
    /// An issuing certificate has a keyUsage without keyCertSign.
    #[error("certificate {index} issues others but its key usage lacks keyCertSign")]
    IssuerKeyUsage {
        /// Chain position.
        index: usize,
    },
    /// Signature algorithm other than sha256WithRSAEncryption.
    #[error("certificate {index}: unsupported signature algorithm {oid}")]
    UnsupportedAlgorithm {
        /// Chain position.
        index: usize,
        /// Algorithm OID.
        oid: String,
    },
    /// A critical extension this verifier does not process.
    #[error("certificate {index}: unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// Chain position.
        index: usize,
        /// Extension OID.
        oid: String,
    },
    /// The subject public key is not a usable RSA key.
    #[error("certificate {index}: bad subject public key: {reason}")]
    BadPublicKey {
        /// Chain position.
        index: usize,
        /// Details.
        reason: String,
    },
    /// Issuance parameters rejected.
    #[error("invalid certificate parameters: {0}")]
    InvalidParams(&'static str),
    /// Building / signing the certificate failed.
    #[error("certificate building failed: {0}")]
    Build(String),
}

impl From<der::Error> for X509Error {
    fn from(e: der::Error) -> Self {
        X509Error::Der(e.to_string())
    }
}

/// Role of the certified entity, carried in the card-role extension as an
/// INTEGER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardRole {
    /// Certificate authority / card issuer (value 1).
    Issuer,
    /// Electronic purse card (value 2).
    Purse,
    /// Secure access module (value 3).
    Sam,
    /// Terminal / host (value 4).
    Terminal,
}

impl CardRole {
    /// Encoded value.
    pub fn code(self) -> u8 {
        match self {
            CardRole::Issuer => 1,
            CardRole::Purse => 2,
            CardRole::Sam => 3,
            CardRole::Terminal => 4,
        }
    }
    /// Decode a value.
    pub fn from_code(v: u8) -> Option<Self> {
        Some(match v {
            1 => CardRole::Issuer,
            2 => CardRole::Purse,
            3 => CardRole::Sam,
            4 => CardRole::Terminal,
            _ => return None,
        })
    }
}

/// Key usage bits this crate sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUse {
    /// digitalSignature
    DigitalSignature,
    /// keyEncipherment
    KeyEncipherment,
    /// keyAgreement
    KeyAgreement,
    /// keyCertSign
    KeyCertSign,
    /// cRLSign
    CrlSign,
}

/// Parameters of a certificate to issue.
#[derive(Debug, Clone)]
pub struct CertificateParams {
    /// Subject common name: the card ID (or CA name). 1..=64 characters from
    /// `A-Z a-z 0-9 - _ . :` and inner spaces.
    pub card_id: String,
    /// Serial number (must be non-zero).
    pub serial: u64,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity (after `not_before`).
    pub not_after: SystemTime,
    /// Value of the card-role extension.
    pub role: CardRole,
    /// keyUsage bits (critical extension); must not be empty.
    pub key_usage: Vec<KeyUse>,
    /// basicConstraints cA (critical extension).
    pub is_ca: bool,
}

impl CertificateParams {
    /// Leaf card certificate: digitalSignature + keyEncipherment, not a CA.
    pub fn card(
        card_id: &str,
        serial: u64,
        role: CardRole,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Self {
        Self {
            card_id: card_id.to_owned(),
            serial,
            not_before,
            not_after,
            role,
            key_usage: vec![KeyUse::DigitalSignature, KeyUse::KeyEncipherment],
            is_ca: false,
        }
    }

    /// CA certificate: keyCertSign + cRLSign + digitalSignature, cA = true,
    /// role [`CardRole::Issuer`].
    pub fn ca(name: &str, serial: u64, not_before: SystemTime, not_after: SystemTime) -> Self {
        Self {
            card_id: name.to_owned(),
            serial,
            not_before,
            not_after,
            role: CardRole::Issuer,
            key_usage: vec![
                KeyUse::KeyCertSign,
                KeyUse::CrlSign,
                KeyUse::DigitalSignature,
            ],
            is_ca: true,
        }
    }
}

/// Serial numbers that must be rejected by [`verify_chain`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    serials: Vec<Vec<u8>>,
}

fn strip_zeros(s: &[u8]) -> &[u8] {
    let first = s.iter().position(|&b| b != 0).unwrap_or(s.len());
    s.get(first..).unwrap_or_default()
}

impl RevocationList {
    /// Empty list.
    pub fn new() -> Self {
        Self::default()
    }
    /// Revoke a numeric serial.
    pub fn revoke(&mut self, serial: u64) {
        self.revoke_bytes(&serial.to_be_bytes());
    }
    /// Revoke a serial given as big-endian bytes (leading zeros ignored).
    pub fn revoke_bytes(&mut self, serial: &[u8]) {
        self.serials.push(strip_zeros(serial).to_vec());
    }
    /// Is this serial (big-endian bytes) revoked?
    pub fn contains(&self, serial: &[u8]) -> bool {
        let s = strip_zeros(serial);
        self.serials.iter().any(|r| r.as_slice() == s)
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.serials.len()
    }
    /// `true` if nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }
}

impl FromIterator<u64> for RevocationList {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut l = Self::new();
        for s in iter {
            l.revoke(s);
        }
        l
    }
}

/// A parsed certificate together with its DER encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardCertificate {
    cert: Certificate,
    der: Vec<u8>,
}

fn unix_secs(t: &Time) -> u64 {
    t.to_unix_duration().as_secs()
}

fn card_role_of(tbs: &TbsCertificate, index: usize) -> Result<Option<CardRole>, X509Error> {
    let Some(exts) = tbs.extensions() else {
        return Ok(None);
    };
    let mut found = None;
    for e in exts.iter().filter(|e| e.extn_id == CARD_ROLE_OID) {
        if found.is_some() {
            return Err(X509Error::BadRoleExtension { index });
        }
        let v = u8::from_der(e.extn_value.as_bytes())
            .map_err(|_| X509Error::BadRoleExtension { index })?;
        found = Some(CardRole::from_code(v).ok_or(X509Error::BadRoleExtension { index })?);
    }
    Ok(found)
}

impl CardCertificate {
    /// Parse DER (the whole input must be one certificate).
    pub fn from_der(der: &[u8]) -> Result<Self, X509Error> {
        let cert = Certificate::from_der(der)?;
        Ok(Self {
            cert,
            der: der.to_vec(),
        })
    }

    /// DER encoding.
    pub fn to_der(&self) -> &[u8] {
        &self.der
    }

    /// The underlying `x509-cert` structure.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// Serial number as big-endian bytes (as encoded; may start with 0x00).
    pub fn serial(&self) -> &[u8] {
        self.cert.tbs_certificate().serial_number().as_bytes()
    }

    /// Serial number as `u64` if it fits.
    pub fn serial_u64(&self) -> Option<u64> {
        let s = strip_zeros(self.serial());
        if s.len() > 8 {
            return None;
        }
        Some(s.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// Subject distinguished name (RFC 4514 string).
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate().subject().to_string()
    }

    /// Issuer distinguished name (RFC 4514 string).
    pub fn issuer(&self) -> String {
        self.cert.tbs_certificate().issuer().to_string()
    }

    /// Subject common name (the card ID), if present.
    pub fn card_id(&self) -> Option<String> {
        self.cert
            .tbs_certificate()
            .subject()
            .common_name()
            .ok()
            .flatten()
            .map(|cn| cn.value().into_owned())
    }

    /// notBefore.
    pub fn not_before(&self) -> SystemTime {
        UNIX_EPOCH
            + self
                .cert
                .tbs_certificate()
                .validity()
                .not_before
                .to_unix_duration()
    }

    /// notAfter.
    pub fn not_after(&self) -> SystemTime {
        UNIX_EPOCH
            + self
                .cert
                .tbs_certificate()
                .validity()
                .not_after
                .to_unix_duration()
    }

    /// Card-role extension value (None if absent).
    pub fn role(&self) -> Result<Option<CardRole>, X509Error> {
        card_role_of(self.cert.tbs_certificate(), 0)
    }

    /// basicConstraints cA flag.
    pub fn is_ca(&self) -> bool {
        matches!(
            self.cert
                .tbs_certificate()
                .get_extension::<BasicConstraints>(),
            Ok(Some((_, BasicConstraints { ca: true, .. })))
        )
    }

    /// Subject public key as RSA.
    pub fn public_key(&self) -> Result<RsaPublicKey, X509Error> {
        self.public_key_at(0)
    }

    fn public_key_at(&self, index: usize) -> Result<RsaPublicKey, X509Error> {
        let spki = self
            .cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| X509Error::BadPublicKey {
                index,
                reason: e.to_string(),
            })?;
        RsaPublicKey::from_spki_der(&spki).map_err(|e| X509Error::BadPublicKey {
            index,
            reason: e.to_string(),
        })
    }
}

/// Parse a DER certificate.
pub fn parse(der: &[u8]) -> Result<CardCertificate, X509Error> {
    CardCertificate::from_der(der)
}

struct CardProfile {
    issuer: Name,
    subject: Name,
    extensions: Vec<Extension>,
}

impl BuilderProfile for CardProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        _spk: spki::SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: spki::SubjectPublicKeyInfoRef<'_>,
        _tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

fn name_for(id: &str) -> Result<Name, X509Error> {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | ' '));
    if id.is_empty() || id.len() > 64 || !ok_chars || id.starts_with(' ') || id.ends_with(' ') {
        return Err(X509Error::InvalidParams(
            "card id must be 1..=64 chars of A-Z a-z 0-9 - _ . : (inner spaces allowed)",
        ));
    }
    Name::from_str(&format!("CN={id}")).map_err(X509Error::from)
}

fn ext(oid: ObjectIdentifier, critical: bool, value: &impl Encode) -> Result<Extension, X509Error> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn build_extensions(params: &CertificateParams) -> Result<Vec<Extension>, X509Error> {
    if params.key_usage.is_empty() {
        return Err(X509Error::InvalidParams("key usage must not be empty"));
    }
    let mut ku = der::flagset::FlagSet::<KeyUsages>::default();
    for u in &params.key_usage {
        ku |= match u {
            KeyUse::DigitalSignature => KeyUsages::DigitalSignature,
            KeyUse::KeyEncipherment => KeyUsages::KeyEncipherment,
            KeyUse::KeyAgreement => KeyUsages::KeyAgreement,
            KeyUse::KeyCertSign => KeyUsages::KeyCertSign,
            KeyUse::CrlSign => KeyUsages::CRLSign,
        };
    }
    let bc = BasicConstraints {
        ca: params.is_ca,
        path_len_constraint: None,
    };
    Ok(vec![
        ext(BASIC_CONSTRAINTS_OID, true, &bc)?,
        ext(KEY_USAGE_OID, true, &KeyUsage(ku))?,
        ext(CARD_ROLE_OID, false, &params.role.code())?,
    ])
}

fn to_time(t: SystemTime) -> Result<Time, X509Error> {
    Time::try_from(t).map_err(X509Error::from)
}

fn build(
    signer_key: &RsaPrivateKey,
    issuer: Name,
    subject_key: &RsaPublicKey,
    params: &CertificateParams,
) -> Result<CardCertificate, X509Error> {
    if params.serial == 0 {
        return Err(X509Error::InvalidParams("serial must be non-zero"));
    }
    if params.not_after <= params.not_before {
        return Err(X509Error::InvalidParams(
            "not_after must be after not_before",
        ));
    }
    let subject = name_for(&params.card_id)?;
    let profile = CardProfile {
        issuer,
        subject,
        extensions: build_extensions(params)?,
    };
    let validity = Validity::new(to_time(params.not_before)?, to_time(params.not_after)?);
    let spki_der = subject_key
        .to_spki_der()
        .map_err(|e| X509Error::Build(e.to_string()))?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&spki_der)?;
    let builder =
        CertificateBuilder::new(profile, SerialNumber::from(params.serial), validity, spki)
            .map_err(|e| X509Error::Build(e.to_string()))?;
    let signer = SigningKey::<Sha256>::new(signer_key.inner().clone());
    let cert = builder
        .build::<_, Pkcs1Signature>(&signer)
        .map_err(|e| X509Error::Build(e.to_string()))?;
    let der = cert.to_der()?;
    Ok(CardCertificate { cert, der })
}

/// Issue a self-signed certificate (a root / trust anchor) for `key`.
pub fn issue_self_signed(
    key: &RsaPrivateKey,
    params: &CertificateParams,
) -> Result<CardCertificate, X509Error> {
    let issuer = name_for(&params.card_id)?;
    build(key, issuer, &key.public_key(), params)
}

/// Issue a certificate for `subject_key`, signed by `ca_key` whose
/// certificate is `ca_cert` (the issuer name is taken from it). Fails with
/// [`X509Error::InvalidParams`] if `ca_key` does not match `ca_cert`.
pub fn issue_certificate(
    ca_key: &RsaPrivateKey,
    ca_cert: &CardCertificate,
    subject_key: &RsaPublicKey,
    params: &CertificateParams,
) -> Result<CardCertificate, X509Error> {
    if ca_cert.public_key()? != ca_key.public_key() {
        return Err(X509Error::InvalidParams(
            "CA key does not match CA certificate",
        ));
    }
    let issuer = ca_cert.cert.tbs_certificate().subject().clone();
    build(ca_key, issuer, subject_key, params)
}

/// Result of a successful [`verify_chain`].
#[derive(Debug, Clone)]
pub struct VerifiedCert {
    /// Leaf subject common name (card ID).
    pub card_id: String,
    /// Leaf role.
    pub role: CardRole,
    /// Leaf serial (big-endian bytes as encoded).
    pub serial: Vec<u8>,
    /// Leaf public key.
    pub public_key: RsaPublicKey,
    /// Leaf notAfter.
    pub not_after: SystemTime,
    /// Number of certificates checked below the anchor.
    pub chain_len: usize,
}

fn check_time(tbs: &TbsCertificate, now: SystemTime, index: usize) -> Result<(), X509Error> {
    let now_d = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let nb = tbs.validity().not_before.to_unix_duration();
    let na = tbs.validity().not_after.to_unix_duration();
    if now_d < nb {
        return Err(X509Error::NotYetValid {
            index,
            not_before: unix_secs(&tbs.validity().not_before),
        });
    }
    if now_d > na {
        return Err(X509Error::Expired {
            index,
            not_after: unix_secs(&tbs.validity().not_after),
        });
    }
    Ok(())
}

fn check_critical(tbs: &TbsCertificate, index: usize) -> Result<(), X509Error> {
    if let Some(exts) = tbs.extensions() {
        for e in exts.iter().filter(|e| e.critical) {
            if e.extn_id != KEY_USAGE_OID
                && e.extn_id != BASIC_CONSTRAINTS_OID
                && e.extn_id != CARD_ROLE_OID
            {
                return Err(X509Error::UnknownCriticalExtension {
                    index,
                    oid: e.extn_id.to_string(),
                });
            }
        }
    }
    Ok(())
}

fn check_issuer_is_ca(issuer: &CardCertificate, index: usize) -> Result<(), X509Error> {
    let tbs = issuer.cert.tbs_certificate();
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => {}
        _ => return Err(X509Error::IssuerNotCa { index }),
    }
    match tbs.get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) if !ku.0.contains(KeyUsages::KeyCertSign) => {
            Err(X509Error::IssuerKeyUsage { index })
        }
        Ok(_) => Ok(()),
        Err(_) => Err(X509Error::IssuerKeyUsage { index }),
    }
}

fn check_signature(
    cert: &CardCertificate,
    issuer_key: &RsaPublicKey,
    index: usize,
) -> Result<(), X509Error> {
    let c = &cert.cert;
    let alg = &c.signature_algorithm().oid;
    if *alg != SHA256_WITH_RSA_OID || c.tbs_certificate().signature().oid != SHA256_WITH_RSA_OID {
        return Err(X509Error::UnsupportedAlgorithm {
            index,
            oid: alg.to_string(),
        });
    }
    let tbs = c.tbs_certificate().to_der()?;
    let sig = c
        .signature()
        .as_bytes()
        .ok_or(X509Error::BadSignature { index })?;
    issuer_key
        .verify_pkcs1v15_sha256(&tbs, sig)
        .map_err(|_| X509Error::BadSignature { index })
}

/// Verify `chain` (leaf first; each certificate issued by the next one, the
/// last one issued by `anchor`) at time `now`.
///
/// Checks, per certificate from the leaf up: issuer name equals the
/// issuer's subject, the issuer is a CA with keyCertSign, signature
/// (sha256WithRSAEncryption) verifies, `now` lies within the validity
/// period, the serial is not in `revoked_serials`, no unknown critical
/// extension. The anchor's own validity period is checked too (its
/// signature is trusted). Finally the leaf must carry a card-role
/// extension. If `chain` ends with the anchor itself, that copy is ignored.
pub fn verify_chain(
    chain: &[CardCertificate],
    anchor: &CardCertificate,
    now: SystemTime,
    revoked_serials: &RevocationList,
) -> Result<VerifiedCert, X509Error> {
    let chain = match chain.split_last() {
        Some((last, rest)) if last.der == anchor.der => rest,
        _ => chain,
    };
    let leaf = chain.first().ok_or(X509Error::EmptyChain)?;
    for (index, cert) in chain.iter().enumerate() {
        let issuer = chain.get(index + 1).unwrap_or(anchor);
        let issuer_index = index + 1;
        let tbs = cert.cert.tbs_certificate();
        let expected = issuer.cert.tbs_certificate().subject();
        if tbs.issuer() != expected {
            return Err(X509Error::IssuerMismatch {
                index,
                expected: expected.to_string(),
                found: tbs.issuer().to_string(),
            });
        }
        check_issuer_is_ca(issuer, issuer_index)?;
        let issuer_key = issuer.public_key_at(issuer_index)?;
        check_signature(cert, &issuer_key, index)?;
        check_time(tbs, now, index)?;
        if revoked_serials.contains(cert.serial()) {
            return Err(X509Error::Revoked {
                index,
                serial: cert.serial().iter().map(|b| format!("{b:02X}")).collect(),
            });
        }
        check_critical(tbs, index)?;
    }
    check_time(anchor.cert.tbs_certificate(), now, chain.len())?;
    let role = card_role_of(leaf.cert.tbs_certificate(), 0)?
        .ok_or(X509Error::MissingRoleExtension { index: 0 })?;
    Ok(VerifiedCert {
        card_id: leaf.card_id().unwrap_or_default(),
        role,
        serial: leaf.serial().to_vec(),
        public_key: leaf.public_key()?,
        not_after: leaf.not_after(),
        chain_len: chain.len(),
    })
}

/// Convert a [`CryptoError`] (e.g. from key import) into an issuance error.
impl From<CryptoError> for X509Error {
    fn from(e: CryptoError) -> Self {
        X509Error::Build(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::CardRng;
    use std::sync::OnceLock;

    const DAY: u64 = 86_400;

    fn t(days: u64) -> SystemTime {
        // 2026-01-01T00:00:00Z + days
        UNIX_EPOCH + Duration::from_secs(1_767_225_600 + days * DAY)
    }

    struct Pki {
        root_key: RsaPrivateKey,
        root: CardCertificate,
        sub_key: RsaPrivateKey,
        sub: CardCertificate,
        card_key: RsaPrivateKey,
        card: CardCertificate,
    }

    fn pki() -> &'static Pki {
        static P: OnceLock<Pki> = OnceLock::new();
        P.get_or_init(|| {
            let mut rng = CardRng::from_seed([9; 32]);
            let root_key = RsaPrivateKey::generate(2048, &mut rng).unwrap();
            let sub_key = RsaPrivateKey::generate(2048, &mut rng).unwrap();
            let card_key = RsaPrivateKey::generate(2048, &mut rng).unwrap();
            let root = issue_self_signed(
                &root_key,
                &CertificateParams::ca("Tessera Root", 1, t(0), t(3650)),
            )
            .unwrap();
            let sub = issue_certificate(
                &root_key,
                &root,
                &sub_key.public_key(),
                &CertificateParams::ca("Tessera Issuer 1", 2, t(0), t(1000)),
            )
            .unwrap();
            let card = issue_certificate(
                &sub_key,
                &sub,
                &card_key.public_key(),
                &CertificateParams::card("04782E21801D80", 77, CardRole::Purse, t(10), t(400)),
            )
            .unwrap();
            Pki {
                root_key,
                root,
                sub_key,
                sub,
                card_key,
                card,
            }
        })
    }

    #[test]
    fn good_chain_and_parse() {
        let p = pki();
        let v = verify_chain(
            &[p.card.clone(), p.sub.clone()],
            &p.root,
            t(100),
            &RevocationList::new(),
        )
        .unwrap();
        assert_eq!(v.card_id, "04782E21801D80");
        assert_eq!(v.role, CardRole::Purse);
        assert_eq!(v.chain_len, 2);
        assert_eq!(v.public_key, p.card_key.public_key());
        // chain may include the anchor at its end
        verify_chain(
            &[p.card.clone(), p.sub.clone(), p.root.clone()],
            &p.root,
            t(100),
            &RevocationList::new(),
        )
        .unwrap();
        let parsed = parse(p.card.to_der()).unwrap();
        assert_eq!(parsed, p.card);
        assert_eq!(parsed.serial_u64(), Some(77));
        assert_eq!(parsed.role().unwrap(), Some(CardRole::Purse));
        assert!(!parsed.is_ca());
        assert!(p.sub.is_ca());
        assert_eq!(parsed.not_after(), t(400));
        assert_eq!(parsed.issuer(), "CN=Tessera Issuer 1");
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let p = pki();
        let chain = [p.card.clone(), p.sub.clone()];
        let r = verify_chain(&chain, &p.root, t(401), &RevocationList::new());
        assert!(
            matches!(r, Err(X509Error::Expired { index: 0, .. })),
            "{r:?}"
        );
        let r = verify_chain(&chain, &p.root, t(5), &RevocationList::new());
        assert!(
            matches!(r, Err(X509Error::NotYetValid { index: 0, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn bad_signature() {
        let p = pki();
        let mut der = p.card.to_der().to_vec();
        let n = der.len();
        der[n - 5] ^= 0x01; // inside the signature BIT STRING
        let forged = parse(&der).unwrap();
        let r = verify_chain(
            &[forged, p.sub.clone()],
            &p.root,
            t(100),
            &RevocationList::new(),
        );
        assert_eq!(r.unwrap_err(), X509Error::BadSignature { index: 0 });
        // signed by the right name but the wrong key
        let other = issue_self_signed(
            &p.card_key,
            &CertificateParams::ca("Tessera Issuer 1", 2, t(0), t(1000)),
        )
        .unwrap();
        let r = verify_chain(
            &[p.card.clone(), other],
            &p.root,
            t(100),
            &RevocationList::new(),
        );
        // the name matches, the key does not: the card's signature fails first
        assert_eq!(r.unwrap_err(), X509Error::BadSignature { index: 0 });
    }

    #[test]
    fn wrong_issuer() {
        let p = pki();
        // card directly under the root: issuer name does not match
        let r = verify_chain(
            std::slice::from_ref(&p.card),
            &p.root,
            t(100),
            &RevocationList::new(),
        );
        assert!(
            matches!(r, Err(X509Error::IssuerMismatch { index: 0, .. })),
            "{r:?}"
        );
        // a card cert used as an issuer: not a CA
        let leaf2 = issue_certificate(
            &p.card_key,
            &p.card,
            &p.sub_key.public_key(),
            &CertificateParams::card("CARD2", 5, CardRole::Sam, t(0), t(100)),
        )
        .unwrap();
        let r = verify_chain(
            &[leaf2, p.card.clone(), p.sub.clone()],
            &p.root,
            t(50),
            &RevocationList::new(),
        );
        assert_eq!(r.unwrap_err(), X509Error::IssuerNotCa { index: 1 });
    }

    #[test]
    fn revoked() {
        let p = pki();
        let chain = [p.card.clone(), p.sub.clone()];
        let crl: RevocationList = [77u64].into_iter().collect();
        let r = verify_chain(&chain, &p.root, t(100), &crl);
        assert_eq!(
            r.unwrap_err(),
            X509Error::Revoked {
                index: 0,
                serial: "4D".into()
            }
        );
        let crl: RevocationList = [2u64].into_iter().collect();
        assert!(matches!(
            verify_chain(&chain, &p.root, t(100), &crl),
            Err(X509Error::Revoked { index: 1, .. })
        ));
        let crl: RevocationList = [3u64, 78].into_iter().collect();
        assert!(verify_chain(&chain, &p.root, t(100), &crl).is_ok());
    }

    #[test]
    fn missing_role_extension() {
        let p = pki();
        // Issue with the role extension removed: re-sign a TBS without it by
        // building through the private builder with a custom profile.
        let subject = name_for("NOROLE").unwrap();
        let mut exts = build_extensions(&CertificateParams::card(
            "NOROLE",
            9,
            CardRole::Purse,
            t(0),
            t(100),
        ))
        .unwrap();
        exts.retain(|e| e.extn_id != CARD_ROLE_OID);
        let profile = CardProfile {
            issuer: p.sub.cert.tbs_certificate().subject().clone(),
            subject,
            extensions: exts,
        };
        let spki =
            SubjectPublicKeyInfoOwned::from_der(&p.card_key.public_key().to_spki_der().unwrap())
                .unwrap();
        let cert = CertificateBuilder::new(
            profile,
            SerialNumber::from(9u64),
            Validity::new(to_time(t(0)).unwrap(), to_time(t(100)).unwrap()),
            spki,
        )
        .unwrap()
        .build::<_, Pkcs1Signature>(&SigningKey::<Sha256>::new(p.sub_key.inner().clone()))
        .unwrap();
        let c = parse(&cert.to_der().unwrap()).unwrap();
        assert_eq!(c.role().unwrap(), None);
        let r = verify_chain(&[c, p.sub.clone()], &p.root, t(50), &RevocationList::new());
        assert_eq!(r.unwrap_err(), X509Error::MissingRoleExtension { index: 0 });
    }

    #[test]
    fn expired_anchor_and_empty_chain() {
        let p = pki();
        assert_eq!(
            verify_chain(&[], &p.root, t(1), &RevocationList::new()).unwrap_err(),
            X509Error::EmptyChain
        );
        let r = verify_chain(
            std::slice::from_ref(&p.sub),
            &p.root,
            t(3651),
            &RevocationList::new(),
        );
        assert!(matches!(r, Err(X509Error::Expired { index: 0, .. })));
        let r = verify_chain(
            &[p.card.clone(), p.sub.clone()],
            &p.root,
            t(1001),
            &RevocationList::new(),
        );
        assert!(matches!(
            r,
            Err(X509Error::Expired { index: 0, .. }) | Err(X509Error::Expired { index: 1, .. })
        ));
    }

    #[test]
    fn bad_der_and_params() {
        let p = pki();
        assert!(matches!(parse(&[]), Err(X509Error::Der(_))));
        assert!(matches!(
            parse(&p.card.to_der()[..100]),
            Err(X509Error::Der(_))
        ));
        let mut trailing = p.card.to_der().to_vec();
        trailing.push(0);
        assert!(parse(&trailing).is_err());
        let bad = CertificateParams::card("bad,id", 1, CardRole::Sam, t(0), t(1));
        assert!(matches!(
            issue_self_signed(&p.root_key, &bad),
            Err(X509Error::InvalidParams(_))
        ));
        let bad = CertificateParams::card("ok", 0, CardRole::Sam, t(0), t(1));
        assert!(matches!(
            issue_self_signed(&p.root_key, &bad),
            Err(X509Error::InvalidParams(_))
        ));
        let bad = CertificateParams::card("ok", 1, CardRole::Sam, t(2), t(1));
        assert!(matches!(
            issue_self_signed(&p.root_key, &bad),
            Err(X509Error::InvalidParams(_))
        ));
        // CA key not matching CA cert
        let r = issue_certificate(
            &p.card_key,
            &p.root,
            &p.card_key.public_key(),
            &CertificateParams::card("X", 1, CardRole::Sam, t(0), t(1)),
        );
        assert!(matches!(r, Err(X509Error::InvalidParams(_))));
    }
}
