//! Not a benchmark: writes the many-certificate states that `scripts/bench`
//! measures, so that "a pass when nothing is due" and `status --offline`
//! can be timed over 1,000 and 10,000 certificates without asking a CA for
//! them. Every certificate is made here with rcgen, the way a CA would make
//! it: ECDSA P-256, one DNS name, issued by an intermediate of a throwaway
//! root, valid from yesterday for 90 days (so no tool finds any of them due:
//! certherd renews at a third of the lifetime left, certbot and lego 30 days
//! before expiry).
//!
//! ```text
//! cargo bench --bench bench-state -- --generate certherd STATE_DIR DIRECTORY_URL N SUFFIX
//! cargo bench --bench bench-state -- --generate certbot  CONFIG_DIR N SUFFIX RENEWALPARAMS_FILE
//! cargo bench --bench bench-state -- --generate lego     LEGO_PATH N SUFFIX
//! ```
//!
//! Certificate `i` (1-based) is named `c{i}` and holds the name
//! `c{i}.{SUFFIX}`:
//! - certherd: installed through the library's own [`Store::install`], as a
//!   renewal would (the configuration is written by the script);
//! - certbot: `archive/`, `live/` (relative symlinks) and `renewal/*.conf`
//!   as certbot 2.x writes them, the `[renewalparams]` section copied from a
//!   renewal configuration certbot itself wrote against the same CA;
//! - lego: `certificates/<domain>.{crt,issuer.crt,key,json}` as `lego run`
//!   writes them (the account must already be there).
//!
//! Run without `--generate` (as `cargo bench` and the test runners do) it
//! does nothing.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use certherd::cert::{Bundle, KeyPem};
use certherd::store::Store;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

fn main() {
    // `cargo bench` appends `--bench` to the arguments given after `--`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) != Some("--generate") {
        // `cargo bench`, `cargo test` and nextest's `--list` land here: no
        // benchmark, no test.
        return;
    }
    let args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["certherd", dir, url, n, suffix] => certherd(Path::new(dir), url, parse_n(n), suffix),
        ["certbot", dir, n, suffix, params] => certbot(Path::new(dir), parse_n(n), suffix, params),
        ["lego", dir, n, suffix] => lego(Path::new(dir), parse_n(n), suffix),
        _ => {
            eprintln!("usage: see the comment at the top of benches/state.rs");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("bench-state: {e}");
        std::process::exit(1);
    }
}

fn parse_n(n: &str) -> usize {
    n.parse().expect("N is a number")
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A throwaway root and intermediate, and leaves issued by the intermediate.
struct Ca {
    intermediate: Issuer<'static, KeyPair>,
    intermediate_pem: String,
    now: OffsetDateTime,
}

/// One issued certificate: the key, the leaf and the intermediate, in PEM.
struct Leaf {
    key_pem: String,
    leaf_pem: String,
    chain_pem: String,
}

impl Ca {
    fn new() -> Result<Ca> {
        let now = OffsetDateTime::now_utc();
        let ca_params = |cn: &str| -> Result<CertificateParams> {
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, cn);
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(3650);
            Ok(p)
        };
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params("certherd bench root")?;
        let root_cert = root_params.self_signed(&root_key)?;
        let root = Issuer::new(root_params, root_key);
        let _ = root_cert;
        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let int_params = ca_params("certherd bench intermediate")?;
        let int_cert = int_params.signed_by(&int_key, &root)?;
        Ok(Ca {
            intermediate_pem: int_cert.pem(),
            intermediate: Issuer::new(int_params, int_key),
            now,
        })
    }

    fn issue(&self, domain: &str) -> Result<Leaf> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(vec![domain.to_string()])?;
        p.distinguished_name = DistinguishedName::new();
        p.not_before = self.now - time::Duration::days(1);
        p.not_after = self.now + time::Duration::days(89);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 8]>()));
        let cert = p.signed_by(&key, &self.intermediate)?;
        Ok(Leaf {
            key_pem: key.serialize_pem(),
            leaf_pem: cert.pem(),
            chain_pem: self.intermediate_pem.clone(),
        })
    }
}

fn each(n: usize, suffix: &str, mut f: impl FnMut(usize, &str, Leaf) -> Result<()>) -> Result<()> {
    let ca = Ca::new()?;
    for i in 1..=n {
        let domain = format!("c{i}.{suffix}");
        f(i, &domain, ca.issue(&domain)?)?;
    }
    Ok(())
}

fn certherd(state_dir: &Path, url: &str, n: usize, suffix: &str) -> Result<()> {
    let store = Store::open(state_dir, url, Duration::from_secs(10))?;
    let now = OffsetDateTime::now_utc();
    each(n, suffix, |i, _, leaf| {
        let chain = format!("{}{}", leaf.leaf_pem, leaf.chain_pem);
        let bundle = Bundle::from_chain(KeyPem::new(leaf.key_pem), &chain)?;
        store.install(&format!("c{i}"), &bundle, now)?;
        Ok(())
    })
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn certbot(config_dir: &Path, n: usize, suffix: &str, params_file: &str) -> Result<()> {
    let params = fs::read_to_string(params_file)?;
    let section = params
        .find("[renewalparams]")
        .map(|at| &params[at..])
        .ok_or("no [renewalparams] in the template")?;
    let version = params
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .ok_or("no version in the template")?
        .to_string();
    for sub in ["archive", "live", "renewal"] {
        fs::create_dir_all(config_dir.join(sub))?;
    }
    let cfg = config_dir.canonicalize()?;
    each(n, suffix, |_, domain, leaf| {
        let archive = cfg.join("archive").join(domain);
        let live = cfg.join("live").join(domain);
        fs::create_dir_all(&archive)?;
        fs::create_dir_all(&live)?;
        let fullchain = format!("{}{}", leaf.leaf_pem, leaf.chain_pem);
        let files = [
            ("cert", &leaf.leaf_pem, 0o644),
            ("chain", &leaf.chain_pem, 0o644),
            ("fullchain", &fullchain, 0o644),
            ("privkey", &leaf.key_pem, 0o600),
        ];
        for (kind, contents, mode) in files {
            write(&archive.join(format!("{kind}1.pem")), contents, mode)?;
            symlink(
                format!("../../archive/{domain}/{kind}1.pem"),
                live.join(format!("{kind}.pem")),
            )?;
        }
        let conf = format!(
            "# renew_before_expiry = 30 days\nversion = {version}\narchive_dir = {a}\n\
             cert = {l}/cert.pem\nprivkey = {l}/privkey.pem\nchain = {l}/chain.pem\n\
             fullchain = {l}/fullchain.pem\n\n# Options used in the renewal process\n{section}",
            a = archive.display(),
            l = live.display(),
        );
        write(
            &cfg.join("renewal").join(format!("{domain}.conf")),
            &conf,
            0o644,
        )
    })
}

fn lego(path: &Path, n: usize, suffix: &str) -> Result<()> {
    let certs = path.join("certificates");
    fs::create_dir_all(&certs)?;
    each(n, suffix, |i, domain, leaf| {
        // `lego run` bundles the issuer into <domain>.crt by default.
        let bundle = format!("{}{}", leaf.leaf_pem, leaf.chain_pem);
        write(&certs.join(format!("{domain}.crt")), &bundle, 0o600)?;
        write(
            &certs.join(format!("{domain}.issuer.crt")),
            &leaf.chain_pem,
            0o600,
        )?;
        write(&certs.join(format!("{domain}.key")), &leaf.key_pem, 0o600)?;
        let json = format!(
            "{{\n\t\"domain\": \"{domain}\",\n\t\"certUrl\": \"https://ca.invalid/cert/{i}\",\n\t\"certStableUrl\": \"https://ca.invalid/cert/{i}\"\n}}"
        );
        write(&certs.join(format!("{domain}.json")), &json, 0o600)
    })
}
