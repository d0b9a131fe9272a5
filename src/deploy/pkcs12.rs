//! PKCS#12 (RFC 7292) files for `file` and `ssh` targets: the private key,
//! the leaf and the chain in one password-protected file, for Java, Windows
//! and appliances that take nothing else.
//!
//! Written with the `p12-keystore` crate (pure Rust, RustCrypto's `pkcs12`,
//! `pkcs5` and `cms` underneath; no system OpenSSL), built without its
//! `pbes1` feature so the legacy RC2/3DES schemes cannot be chosen. Both the
//! key bag and the certificates are encrypted with PBES2 (RFC 8018):
//! PBKDF2-HMAC-SHA256 and AES-256-CBC; the file's integrity MAC is
//! HMAC-SHA256. The iteration counts are the crate's, which are Java's
//! defaults. OpenSSL 3 opens such a file without `-legacy`, and Java's
//! `keytool` (JDK 12 and later) lists it as one `PrivateKeyEntry` whose
//! alias is the friendly name.
//!
//! Every write draws new salts and IVs, so the bytes differ each time:
//! whether a file holds a bundle is decided by decrypting it with the
//! configured password and comparing what is inside ([`holds`]).

use p12_keystore::{
    Certificate, KeyStore, KeyStoreEntry, Pkcs12Archive, PrivateKey, PrivateKeyChain,
};

use crate::cert::Bundle;
use crate::config::Pkcs12File;

#[derive(Debug, thiserror::Error)]
pub enum Pkcs12Error {
    #[error("the private key is not a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----)")]
    KeyFormat,
    #[error("building the PKCS#12 file: {0}")]
    Encode(#[source] p12_keystore::error::Error),
}

/// The PKCS#12 file for `b`: one key entry named `p.name` with the leaf and
/// the chain (issuer first), encrypted with `p.password`.
pub fn encode(b: &Bundle, p: &Pkcs12File) -> Result<Vec<u8>, Pkcs12Error> {
    let key = PrivateKey::from_der(&key_der(b)?).map_err(Pkcs12Error::Encode)?;
    let mut certs = Vec::new();
    for der in certificates(b) {
        certs.push(Certificate::from_der(&der).map_err(Pkcs12Error::Encode)?);
    }
    // The local key ID pairs the key with its certificate; readers only
    // compare it, so the leaf's SHA-256 serves.
    let local_key_id = hex::decode(&b.info.sha256).unwrap_or_default();
    let mut store = KeyStore::new();
    store.add_entry(
        &p.name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, certs)),
    );
    store
        .writer(p.password.expose())
        .write()
        .map_err(Pkcs12Error::Encode)
}

/// Whether `data` opens with `p.password` and holds exactly `b`'s key (named
/// `p.name`), leaf and chain. A changed password or name therefore counts as
/// not holding it, and the file is written again.
pub fn holds(data: &[u8], b: &Bundle, p: &Pkcs12File) -> bool {
    let Ok(archive) = Pkcs12Archive::from_pkcs12(data, p.password.expose()) else {
        return false;
    };
    let Ok(key) = key_der(b) else {
        return false;
    };
    let [only] = archive.keys.as_slice() else {
        return false;
    };
    let certs: Vec<&[u8]> = archive.certs.iter().map(|c| c.cert.as_der()).collect();
    let want = certificates(b);
    only.key.as_der() == key.as_slice()
        && only.friendly_name.as_deref() == Some(p.name.as_str())
        && certs == want.iter().map(Vec::as_slice).collect::<Vec<_>>()
}

/// The leaf then the intermediates, DER.
fn certificates(b: &Bundle) -> Vec<Vec<u8>> {
    let leaf = crate::cert::pem_certificates(&b.leaf_pem)
        .ok()
        .and_then(|c| c.into_iter().next());
    leaf.into_iter()
        .chain(b.chain_der())
        .map(|c| c.as_ref().to_vec())
        .collect()
}

fn key_der(b: &Bundle) -> Result<Vec<u8>, Pkcs12Error> {
    match pem::parse(b.key.expose()) {
        Ok(block) if block.tag() == "PRIVATE KEY" => Ok(block.into_contents()),
        _ => Err(Pkcs12Error::KeyFormat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn options(password: &str, name: &str) -> Pkcs12File {
        Pkcs12File {
            path: "/unused/site.p12".into(),
            password: Secret::new(password.into(), "env P12_PASSWORD".into()),
            name: name.into(),
        }
    }

    fn bundle() -> Bundle {
        crate::store::tests::bundle(&["a.test"], time::OffsetDateTime::now_utc(), 90)
    }

    #[test]
    fn a_written_file_holds_its_bundle_and_nothing_else() {
        let b = bundle();
        let p = options("correct horse", "site");
        let first = encode(&b, &p).unwrap();
        let second = encode(&b, &p).unwrap();
        assert_ne!(first, second, "salted: the bytes differ every time");
        assert!(holds(&first, &b, &p));
        assert!(holds(&second, &b, &p));
        assert!(!holds(&first, &bundle(), &p), "another certificate and key");
        assert!(
            !holds(&first, &b, &options("wrong", "site")),
            "wrong password"
        );
        assert!(
            !holds(&first, &b, &options("correct horse", "other")),
            "renamed"
        );
        assert!(!holds(b"not a pkcs12 file", &b, &p));
    }

    #[test]
    fn it_holds_the_key_leaf_and_chain_under_the_friendly_name() {
        let b = bundle();
        let data = encode(&b, &options("pw", "my alias")).unwrap();
        let store =
            KeyStore::from_pkcs12(&data, "pw", p12_keystore::Pkcs12ImportPolicy::Relaxed).unwrap();
        let (alias, chain) = store.private_key_chain().unwrap();
        assert_eq!(alias, "my alias");
        assert_eq!(chain.key().as_der(), key_der(&b).unwrap().as_slice());
        let got: Vec<Vec<u8>> = chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
        assert_eq!(got, certificates(&b));
        assert_eq!(got.len(), 1 + b.chain_der().len());
    }

    #[test]
    fn a_key_that_is_not_pkcs8_is_named() {
        let mut b = bundle();
        b.key = crate::cert::KeyPem::new(
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n".into(),
        );
        assert_eq!(
            encode(&b, &options("pw", "site")).unwrap_err().to_string(),
            "the private key is not a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----)"
        );
    }
}
