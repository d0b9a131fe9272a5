//! Private keys and CSRs with rcgen, for every key type certherd offers.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, RsaKeySize};

use crate::cert::KeyPem;
use crate::config::KeyType;

pub fn generate(kind: KeyType) -> Result<KeyPair, rcgen::Error> {
    match kind {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    }
}

pub fn load(pem: &KeyPem) -> Result<KeyPair, rcgen::Error> {
    KeyPair::from_pem(pem.expose())
}

/// A CSR (DER) naming every domain as a subjectAltName, empty subject.
pub fn csr_der(domains: &[String], key: &KeyPair) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = CertificateParams::new(domains.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// Whether `key` is the private half of the certificate's public key.
pub fn matches(key: &KeyPem, cert_der: &[u8]) -> bool {
    use x509_parser::prelude::*;
    let Ok(kp) = KeyPair::from_pem(key.expose()) else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return false;
    };
    use rcgen::PublicKeyData;
    cert.tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref()
        == kp.der_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_type_makes_a_csr_and_a_matching_certificate() {
        for kind in KeyType::ALL {
            let key = generate(kind).unwrap();
            let csr = csr_der(&["a.example".into(), "*.a.example".into()], &key).unwrap();
            assert!(!csr.is_empty());
            let cert = CertificateParams::new(vec!["a.example".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let pem = KeyPem::new(key.serialize_pem());
            assert!(matches(&pem, cert.der()), "{kind}");
            let info = crate::cert::info(cert.der()).unwrap();
            assert_eq!(info.key_type, Some(kind));
            let other = KeyPem::new(generate(KeyType::EcdsaP256).unwrap().serialize_pem());
            assert!(!matches(&other, cert.der()));
        }
    }
}
