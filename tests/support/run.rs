//! Running the certherd binary in a scratch directory with a configuration
//! for the Pebble + nginx tests.

use std::path::{Path, PathBuf};
use std::process::Output;

use super::{certherd_cmd, Nginx, Pebble, ScratchDir};

pub const SITE: &str = "site.certherd.test";

/// A scratch directory with a configuration for one certificate whose
/// target is `nginx`.
pub struct Setup {
    pub dir: ScratchDir,
}

#[allow(dead_code)]
impl Setup {
    pub fn new() -> Setup {
        Setup {
            dir: ScratchDir::new("certherd-e2e-"),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("certherd.yaml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn write_config(&self, yaml: &str) {
        std::fs::write(self.config_path(), yaml).unwrap();
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = certherd_cmd()
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .output()
            .expect("run certherd");
        Run::from(out)
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub fn yaml_list(argv: &[String]) -> String {
    let quoted: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The configuration the tests start from: the built-in responder on the
/// port Pebble validates, nginx as a file target with reload and verify.
pub fn config(pebble: &Pebble, nginx: &Nginx, setup: &Setup, extra_targets: &str) -> String {
    let web = format!(
        r#"      - name: web
        type: file
        fullchain: {cert}
        key: {key}
        reload: {reload}
        verify:
          connect: "{addr}"
          server_name: {SITE}
          timeout: 10s
{extra_targets}"#,
        cert = nginx.cert_path().display(),
        key = nginx.key_path().display(),
        reload = yaml_list(&nginx.reload_argv()),
        addr = nginx.addr(),
    );
    let www = format!("www.{SITE}");
    site_config(pebble, setup, &[SITE, &www], &web)
}

/// The report line of [`config`]'s `web` target deployed, reloaded and
/// verified serving the certificate `sha`.
pub fn web_deployed_line(nginx: &Nginx, sha: &str) -> String {
    format!(
        "  web (file): deployed; reload `{}` exited 0; verified: serves {sha}",
        nginx.reload_argv().join(" ")
    )
}

/// A configuration with one certificate, `site`, for `domains`, issued by
/// `pebble` through the built-in http-01 responder, whose `targets:` list
/// is `targets` (YAML list items indented by six spaces; anything after
/// them at four spaces, such as `rollout:`, belongs to the certificate).
pub fn site_config(pebble: &Pebble, setup: &Setup, domains: &[&str], targets: &str) -> String {
    format!(
        r#"state_dir: {state}
acme:
  directory: {dir}
  contact: [ops@certherd.test]
  trust_roots: [{root}]
challenges:
  standalone:
    type: http-01
    listen: "127.0.0.1:{http}"
certificates:
  site:
    domains: [{domains}]
    challenge: standalone
    targets:
{targets}"#,
        state = setup.state_dir().display(),
        dir = pebble.directory_url(),
        root = pebble.ca_tls_root_path().display(),
        http = pebble.http_port(),
        domains = domains.join(", "),
    )
}

/// The folder of the stored current certificate of `site`.
pub fn stored_dir(setup: &Setup) -> PathBuf {
    let ca = setup.state_dir().join("ca");
    let ns = std::fs::read_dir(&ca)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    ns.join("certs/site/current")
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn status_json(setup: &Setup, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let run = setup.run(&args);
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", run.stdout))
}

pub fn stored_sha256(setup: &Setup) -> String {
    status_json(setup, &["--offline"])["certificates"][0]["sha256"]
        .as_str()
        .expect("a current certificate")
        .to_string()
}

pub fn key_material(pem_path: &Path) -> String {
    // The base64 body of the key, without the armour lines.
    std::fs::read_to_string(pem_path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().mode() & 0o777
}
