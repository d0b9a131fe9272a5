//! Crash safety: SIGKILL `certherd renew --force` and `certherd run` at
//! seeded random moments, then check what an operator would find.
//!
//! Ignored by default (it runs for minutes); `scripts/crash-test
//! [ITERATIONS] [SEED]` runs it. One Pebble, one nginx (a `file` target with
//! reload and verify, which also writes a `combined` key + chain file), two
//! sshd "hosts" (`ssh` targets with a remote reload) and one HAProxy (a
//! `haproxy` target, updated through its runtime API) serve every iteration:
//!
//! 1. start `renew --force` or `run` (a configuration that is always due, so
//!    the agent renews pass after pass) in its own process group;
//! 2. after a seeded delay spread over an unkilled run's duration, SIGKILL
//!    it, or its whole process group (its `ssh` and reload children too,
//!    as a power cut or systemd's cgroup kill would);
//! 3. check: `status --json --offline` loads the store; every stored version
//!    has key, leaf, chain and full chain, and the key is the leaf's;
//!    `current` names a complete version; every target's key is its
//!    certificate's (in the `combined` files too), and that certificate is
//!    one the store still keeps; HAProxy holds (in memory) a certificate the
//!    store keeps;
//! 4. an unkilled `renew` must exit 0: every target deployed, nginx and
//!    HAProxy verified serving the current certificate, every target's
//!    files are then the current certificate's, and HAProxy holds it with
//!    no certificate transaction left open.
//!
//! The `file` and `ssh` targets use `layout: links` (one rename switches
//! key and certificate together); `CRASH_LAYOUT=files` runs them as plain
//! files instead, whose two renames leave a window a kill can land in.
//!
//! The phase each kill landed in is read from the killed run's log and
//! what the kill left on disk. Every finding is printed; the test fails if
//! there is any. Environment: `CRASH_ITERATIONS` (default 50),
//! `CRASH_KILLS` (stop once this many kills landed; default: never),
//! `CRASH_SEED` (default: from the clock, printed), `CRASH_SUMMARY` (a file
//! to write the summary to).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use support::haproxy::Haproxy;
use support::run::{yaml_list, Run, Setup, SITE};
use support::sshd::Sshd;
use support::{Nginx, Pebble, PebbleOptions};

struct SshHost {
    name: String,
    sshd: Sshd,
    fullchain: PathBuf,
    key: PathBuf,
}

/// Files that receive the certificate: the target's name, its key file
/// and its certificate file (one path for a key + chain `combined` file),
/// and whether they follow the `layout` under test.
struct TargetFiles {
    name: String,
    fullchain: PathBuf,
    key: PathBuf,
    laid_out: bool,
}

struct Env {
    pebble: Pebble,
    nginx: Nginx,
    hosts: Vec<SshHost>,
    haproxy: Haproxy,
    setup: Setup,
}

impl Env {
    fn start() -> Env {
        let pebble = Pebble::start(PebbleOptions::default());
        let nginx = Nginx::start();
        let setup = Setup::new();
        let hosts: Vec<SshHost> = (0..2)
            .map(|i| {
                let sshd = Sshd::start();
                let dir = sshd.remote_dir();
                SshHost {
                    name: format!("lb{i}"),
                    fullchain: dir.join("site.pem"),
                    key: dir.join("site.key"),
                    sshd,
                }
            })
            .collect();
        let env = Env {
            pebble,
            nginx,
            hosts,
            haproxy: Haproxy::start(SITE),
            setup,
        };
        fs::write(env.agent_config_path(), env.config(true)).unwrap();
        env.setup.write_config(&env.config(false));
        env
    }

    fn agent_config_path(&self) -> PathBuf {
        self.setup.dir.path().join("agent.yaml")
    }

    /// The configuration; `always_due` makes every pass of `run` renew.
    fn config(&self, always_due: bool) -> String {
        let mut ssh = String::new();
        for h in &self.hosts {
            let kh = self
                .setup
                .dir
                .path()
                .join(format!("known_hosts-{}", h.name));
            fs::write(&kh, format!("{}\n", h.sshd.known_hosts_line())).unwrap();
            let reload = vec![
                "touch".to_string(),
                h.sshd.remote_dir().join("reloaded").display().to_string(),
            ];
            ssh.push_str(&h.sshd.target_yaml(
                &h.name,
                &kh,
                &h.fullchain,
                &h.key,
                &format!(
                    "        layout: {}\n        reload: {}\n",
                    layout(),
                    yaml_list(&reload)
                ),
            ));
        }
        let renewal = if always_due {
            // Longer than Pebble's certificates live: always due.
            "renewal:\n  before_expiry: 3000d\n  check_interval: 1h\n  jitter: 0s\n"
        } else {
            ""
        };
        format!(
            r#"state_dir: {state}
acme:
  directory: {dir}
  contact: [ops@certherd.test]
  trust_roots: [{root}]
{renewal}challenges:
  standalone:
    type: http-01
    listen: "127.0.0.1:{http}"
certificates:
  site:
    domains: [{SITE}, www.{SITE}]
    challenge: standalone
    targets:
      - name: web
        type: file
        fullchain: {cert}
        key: {key}
        combined: {combined}
        layout: {layout}
        reload: {reload}
        verify:
          connect: "{addr}"
          server_name: {SITE}
          timeout: 10s
      - name: lb-haproxy
        type: haproxy
        socket: {socket}
        combined: {haproxy_combined}
        verify:
          connect: "{haproxy_addr}"
          server_name: {SITE}
          timeout: 10s
{ssh}"#,
            layout = layout(),
            state = self.setup.state_dir().display(),
            dir = self.pebble.directory_url(),
            root = self.pebble.ca_tls_root_path().display(),
            http = self.pebble.http_port(),
            cert = self.nginx.cert_path().display(),
            key = self.nginx.key_path().display(),
            combined = self.web_combined().display(),
            reload = yaml_list(&self.nginx.reload_argv()),
            addr = self.nginx.addr(),
            socket = self.haproxy.admin_socket().display(),
            haproxy_combined = self.haproxy.combined_path().display(),
            haproxy_addr = self.haproxy.addr(),
        )
    }

    /// The `file` target's `combined` file (key + full chain), beside
    /// nginx's two.
    fn web_combined(&self) -> PathBuf {
        self.nginx.key_path().with_file_name("site-combined.pem")
    }

    fn targets(&self) -> Vec<TargetFiles> {
        let mut t = vec![
            TargetFiles {
                name: "web".into(),
                fullchain: self.nginx.cert_path(),
                key: self.nginx.key_path(),
                laid_out: true,
            },
            TargetFiles {
                name: "web".into(),
                fullchain: self.web_combined(),
                key: self.web_combined(),
                laid_out: true,
            },
            TargetFiles {
                name: "lb-haproxy".into(),
                fullchain: self.haproxy.combined_path(),
                key: self.haproxy.combined_path(),
                laid_out: false,
            },
        ];
        for h in &self.hosts {
            t.push(TargetFiles {
                name: h.name.clone(),
                fullchain: h.fullchain.clone(),
                key: h.key.clone(),
                laid_out: true,
            });
        }
        t
    }

    /// The serial of the certificate HAProxy holds in memory (`show ssl
    /// cert NAME` shows the committed one, not an open transaction's).
    fn haproxy_serial(&self) -> Result<String, String> {
        let name = self.haproxy.combined_path();
        let reply = self
            .haproxy
            .api(&format!("show ssl cert {}", name.display()));
        reply
            .lines()
            .find_map(|l| l.strip_prefix("Serial: "))
            .map(normal_serial)
            .ok_or_else(|| format!("HAProxy's `show ssl cert {}`: {reply}", name.display()))
    }

    /// The folders where interrupted writes could leave temp files.
    fn target_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![
            self.nginx.key_path().parent().unwrap().to_path_buf(),
            self.haproxy.combined_path().parent().unwrap().to_path_buf(),
        ];
        dirs.extend(self.hosts.iter().map(|h| h.sshd.remote_dir()));
        dirs
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Renew,
    Run,
}

/// The certherd binary under test: `CRASH_CERTHERD_BIN` (scripts/crash-test
/// runs a copy, so builds during a long run do not swap it), else the one
/// built with this test. The ambient environment is cleaned as
/// [`support::certherd_cmd`] does.
fn certherd() -> Command {
    let bin = std::env::var_os("CRASH_CERTHERD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_certherd")));
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CERTHERD_") {
            cmd.env_remove(key);
        }
    }
    for key in support::AMBIENT_ENV {
        cmd.env_remove(key);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// `certherd --config <the configuration> ARGS`, to its end.
fn run(env: &Env, args: &[&str]) -> Run {
    let out = certherd()
        .arg("--config")
        .arg(env.setup.config_path())
        .args(args)
        .output()
        .expect("run certherd");
    Run::from(out)
}

fn spawn(env: &Env, mode: Mode, log: &Path) -> Child {
    let mut cmd = certherd();
    match mode {
        Mode::Renew => cmd
            .arg("--config")
            .arg(env.setup.config_path())
            .args(["renew", "--force"]),
        Mode::Run => cmd.arg("--config").arg(env.agent_config_path()).arg("run"),
    };
    cmd.env("RUST_LOG", "certherd=debug")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .process_group(0)
        .spawn()
        .expect("start certherd")
}

/// Waits until no process is left in process group `pgid`.
fn wait_group_gone(pgid: i32, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    // SAFETY: kill(2) with signal 0 only asks whether the group exists.
    while unsafe { libc::kill(-pgid, 0) } == 0 {
        if start.elapsed() > limit {
            return Err(format!("process group {pgid} still alive after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Waits until no process names one of `dirs` on its command line: the
/// remote script of a killed run's `ssh` (and its reload) go on after the
/// client dies, detached from sshd: to clean up what it staged (it never
/// got certherd's commit), or to finish the switch it was told to make.
fn wait_remote_scripts_gone(dirs: &[PathBuf], limit: Duration) -> Result<(), String> {
    let me = std::process::id().to_string();
    let needles: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let start = Instant::now();
    loop {
        let busy: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && *pid != me)
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    // Not the sshd listeners themselves (their config is in the parent folder).
                    !c.contains("sshd_config") && needles.iter().any(|n| c.contains(n.as_str()))
                })
            })
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "remote scripts {busy:?} still running after {limit:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The DER of every certificate in a PEM text.
fn pem_ders(text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .map(|v| {
            v.into_iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| p.into_contents())
                .collect()
        })
        .unwrap_or_default()
}

/// The public key (the bits of its SubjectPublicKeyInfo) of a certificate.
fn cert_spki(der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(cert
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}

/// The public key of the PEM private key in `pem_text` (alone, or in a
/// combined file with certificates), as [`cert_spki`] gives it.
fn key_spki(pem_text: &str) -> Result<Vec<u8>, String> {
    use rcgen::PublicKeyData;
    let blocks = pem::parse_many(pem_text).map_err(|e| e.to_string())?;
    let block = blocks
        .iter()
        .find(|p| p.tag().ends_with("PRIVATE KEY"))
        .ok_or("no private key")?;
    let key = rcgen::KeyPair::from_pem(&pem::encode(block)).map_err(|e| e.to_string())?;
    Ok(key.der_bytes().to_vec())
}

/// A certificate serial in one spelling: hex digits, lower case, no
/// leading zeros (HAProxy prints `0A1B`, x509-parser gives bytes).
fn normal_serial(s: &str) -> String {
    s.trim().trim_start_matches('0').to_ascii_lowercase()
}

/// The serial of a DER certificate, as [`normal_serial`] spells it.
fn cert_serial(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(normal_serial(&hex))
}

/// `Ok(leaf sha256)` when the key file and the certificate file (leaf
/// first) belong together.
fn pair_matches(key: &Path, fullchain: &Path) -> Result<String, String> {
    let key_text = fs::read_to_string(key).map_err(|e| format!("read {}: {e}", key.display()))?;
    let chain =
        fs::read_to_string(fullchain).map_err(|e| format!("read {}: {e}", fullchain.display()))?;
    let ders = pem_ders(&chain);
    let leaf = ders
        .first()
        .ok_or_else(|| format!("{}: no certificate", fullchain.display()))?;
    let want = cert_spki(leaf).map_err(|e| format!("{}: {e}", fullchain.display()))?;
    let have = key_spki(&key_text).map_err(|e| format!("{}: {e}", key.display()))?;
    if want != have {
        return Err(format!(
            "{} is not the key of the certificate in {}",
            key.display(),
            fullchain.display()
        ));
    }
    Ok(support::sha256_hex(leaf))
}

/// The certificate folder of `site` in the state directory.
fn cert_dir(env: &Env) -> Option<PathBuf> {
    let ca = env.setup.state_dir().join("ca");
    let ns = fs::read_dir(&ca).ok()?.next()?.ok()?.path();
    Some(ns.join("certs/site"))
}

/// `links` (the default) or `files`: the `layout` of the file and ssh targets.
fn layout() -> String {
    std::env::var("CRASH_LAYOUT").unwrap_or_else(|_| "links".into())
}

/// Hidden entries (temp files or folders of interrupted writes) in `dir`;
/// in the folder of a `links` target, anything beside `current` and the
/// version it names.
fn debris(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".certherd") {
            let current = fs::read_link(e.path().join("current")).ok();
            for v in fs::read_dir(e.path())
                .into_iter()
                .flatten()
                .filter_map(|v| v.ok())
            {
                let n = v.file_name();
                if n != "current" && current.as_deref() != Some(Path::new(&n)) {
                    found.push(format!("{name}/{}", n.to_string_lossy()));
                }
            }
        } else if name.starts_with('.') {
            found.push(name);
        }
    }
    found
}

/// A version the store keeps: its leaf's sha256 and serial.
struct Kept {
    sha256: String,
    serial: String,
}

/// Every stored version; problems go to `findings`.
fn check_store(env: &Env, findings: &mut Vec<String>) -> Vec<Kept> {
    let mut kept = Vec::new();
    let Some(dir) = cert_dir(env) else {
        return kept;
    };
    let versions = dir.join("versions");
    for e in fs::read_dir(&versions).into_iter().flatten() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let v = e.path();
        for f in ["privkey.pem", "cert.pem", "chain.pem", "fullchain.pem"] {
            if !v.join(f).is_file() {
                findings.push(format!("stored version {name} lacks {f}"));
            }
        }
        let serial = fs::read_to_string(v.join("cert.pem"))
            .ok()
            .and_then(|pem| pem_ders(&pem).into_iter().next())
            .map(|der| cert_serial(&der));
        match (
            pair_matches(&v.join("privkey.pem"), &v.join("fullchain.pem")),
            serial,
        ) {
            (Ok(sha256), Some(Ok(serial))) => kept.push(Kept { sha256, serial }),
            (Err(e), _) | (_, Some(Err(e))) => findings.push(format!("stored version {name}: {e}")),
            (_, None) => findings.push(format!("stored version {name}: no leaf in cert.pem")),
        }
    }
    match fs::read_link(dir.join("current")) {
        Ok(target) => {
            let v = dir.join(&target);
            if let Err(e) = pair_matches(&v.join("privkey.pem"), &v.join("cert.pem")) {
                findings.push(format!("current -> {}: {e}", target.display()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => findings.push(format!("current link: {e}")),
    }
    kept
}

/// What the kill left, on disk and in the log: the phase it landed in.
fn phase(env: &Env, log: &str, before: &Snapshot) -> &'static str {
    if let Some(dir) = cert_dir(env) {
        // A temp version or link this kill left.
        if store_debris_count(env) > before.store_debris {
            return "storing";
        }
        // A complete new version that `current` does not name yet.
        let mut names: Vec<String> = fs::read_dir(dir.join("versions"))
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let current = fs::read_link(dir.join("current")).ok();
        if let (Some(newest), Some(current)) = (names.last(), current) {
            if !current.ends_with(newest) {
                return "storing";
            }
        }
    }
    // The last pass only (the agent runs several).
    let pass = log.rsplit("pass started").next().unwrap_or(log);
    let seen = |msg: &str| pass.contains(msg);
    if pass.contains("pass finished") {
        return "between passes";
    }
    if !seen(" due") {
        return "starting";
    }
    if !seen("renewed and stored") {
        return "issuing";
    }
    let targets = env.targets();
    let deployed = |t: &TargetFiles| {
        pass.lines()
            .any(|l| l.contains("deployed") && l.contains(&format!("target={}", t.name)))
    };
    if targets.iter().all(deployed) {
        return "verifying";
    }
    // A target whose files are the new ones but that is not yet recorded
    // as deployed was in its reload.
    let stored = env
        .setup
        .state_dir()
        .join("ca")
        .read_dir()
        .ok()
        .and_then(|mut r| r.next())
        .and_then(|e| e.ok())
        .and_then(|e| fs::read(e.path().join("certs/site/current/fullchain.pem")).ok());
    let reloading = targets
        .iter()
        .any(|t| !deployed(t) && stored.is_some() && fs::read(&t.fullchain).ok() == stored);
    if reloading {
        "reloading"
    } else {
        "deploying"
    }
}

struct Snapshot {
    store_debris: usize,
}

fn store_debris_count(env: &Env) -> usize {
    cert_dir(env)
        .map(|d| debris(&d.join("versions")).len() + debris(&d).len())
        .unwrap_or(0)
}

fn target_debris_count(env: &Env) -> usize {
    env.target_dirs().iter().map(|d| debris(d).len()).sum()
}

/// An unkilled run's milestones, as offsets from its start: when it found
/// the certificate due, stored the new one, recorded each target deployed,
/// and ended (the agent: finished its first pass).
struct Timeline {
    due: Duration,
    stored: Duration,
    first_deployed: Duration,
    last_deployed: Duration,
    end: Duration,
}

impl Timeline {
    /// Stretches of the run to aim kills at, each chosen equally often, so
    /// that the short ones (storing takes milliseconds) are hit too.
    fn segments(&self) -> [(Duration, Duration); 5] {
        let store_start = self.stored.saturating_sub(Duration::from_millis(25));
        [
            (Duration::ZERO, self.due),
            (self.due, store_start),
            (store_start, self.stored + Duration::from_millis(5)),
            (self.stored, self.last_deployed),
            // Not quite to the end: a kill after the exit is no kill.
            (self.first_deployed, self.end.mul_f64(0.9)),
        ]
    }

    fn pick(&self, rng: &mut impl Rng) -> Duration {
        let (a, b) = self.segments()[rng.random_range(0..5)];
        let b = b.max(a + Duration::from_millis(1));
        a + (b - a).mul_f64(rng.random::<f64>())
    }
}

/// The offset of a log line's timestamp from `start`.
fn offset(line: &str, start: std::time::SystemTime) -> Option<Duration> {
    let ts = line.split_whitespace().next()?;
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    let start = time::OffsetDateTime::from(start);
    Duration::try_from(t - start).ok()
}

fn timeline(env: &Env, mode: Mode) -> Timeline {
    let log = env.setup.dir.path().join("calibrate.log");
    let wall = std::time::SystemTime::now();
    let start = Instant::now();
    let mut child = spawn(env, mode, &log);
    match mode {
        Mode::Renew => {
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "unkilled renew --force failed:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Mode::Run => {
            while !fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("pass finished")
            {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "the agent finished no pass within 60s:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            // SAFETY: SIGKILL to the process group of the child we spawned.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            wait_group_gone(child.id() as i32, Duration::from_secs(10)).unwrap();
        }
    }
    let end = start.elapsed();
    let text = fs::read_to_string(&log).unwrap();
    let at = |msg: &str| {
        text.lines()
            .filter(|l| l.contains(msg))
            .filter_map(|l| offset(l, wall))
            .collect::<Vec<_>>()
    };
    let first = |msg: &str| {
        *at(msg)
            .first()
            .unwrap_or_else(|| panic!("no {msg:?} in the unkilled run's log:\n{text}"))
    };
    let deployed = at("deployed certificate=");
    Timeline {
        due: first(" due certificate="),
        stored: first("renewed and stored"),
        first_deployed: *deployed.first().expect("a target deployed"),
        last_deployed: *deployed.last().unwrap(),
        end,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "minutes long: run it with scripts/crash-test"]
fn sigkill_at_random_moments_loses_and_mismatches_no_key() {
    let iterations: usize = env_or("CRASH_ITERATIONS", 50);
    let seed: u64 = env_or(
        "CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    // Optional: stop early once this many kills landed.
    let stop_after_kills: usize = env_or("CRASH_KILLS", usize::MAX);
    eprintln!("crash harness: {iterations} iterations, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = Env::start();
    let started = Instant::now();

    // An unkilled first run puts a certificate everywhere; then calibrate.
    run(&env, &["renew"]).assert_code(0);
    let renew_line = timeline(&env, Mode::Renew);
    let run_line = timeline(&env, Mode::Run);
    run(&env, &["renew"]).assert_code(0);
    let (renew_time, run_time) = (renew_line.end, run_line.end);
    eprintln!("unkilled: renew --force {renew_time:?}, run's first pass {run_time:?}");
    if std::env::var_os("CRASH_VERBOSE").is_some() {
        let calibrate = env.setup.dir.path().join("calibrate.log");
        eprintln!("{}", fs::read_to_string(calibrate).unwrap_or_default());
    }

    let remote_dirs: Vec<PathBuf> = env.hosts.iter().map(|h| h.sshd.remote_dir()).collect();
    let mut findings: Vec<String> = Vec::new();
    let mut phases: BTreeMap<(Mode, &'static str), usize> = BTreeMap::new();
    let mut kills = 0usize;
    let mut exited_first = 0usize;
    let mut max_target_debris = 0usize;
    let mut max_store_debris = 0usize;
    let log = env.setup.dir.path().join("killed.log");
    for i in 0..iterations {
        if kills >= stop_after_kills {
            break;
        }
        assert!(
            env.setup.config_path().exists(),
            "the scratch folder {} was removed by something else; set TMPDIR elsewhere",
            env.setup.dir.path().display()
        );
        let mode = if rng.random_bool(0.5) {
            Mode::Renew
        } else {
            Mode::Run
        };
        // Aimed at one of the run's stretches (see `Timeline::segments`);
        // one agent kill in five lands anywhere in its first two passes.
        let delay = match mode {
            Mode::Renew => renew_line.pick(&mut rng),
            Mode::Run if rng.random_bool(0.2) => run_time.mul_f64(2.0 * rng.random::<f64>()),
            Mode::Run => run_line.pick(&mut rng),
        };
        let whole_group = rng.random_bool(0.5);
        let before = Snapshot {
            store_debris: store_debris_count(&env),
        };
        let mut child = spawn(&env, mode, &log);
        let pgid = child.id() as i32;
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        // SAFETY: SIGKILL to the child we spawned (or its own process group).
        unsafe {
            if whole_group {
                libc::kill(-pgid, libc::SIGKILL);
            } else {
                libc::kill(pgid, libc::SIGKILL);
            }
        }
        let _ = child.wait();
        let mut problems = Vec::new();
        if !whole_group {
            // Its children (ssh, reload commands) finish on their own.
            if let Err(e) = wait_group_gone(pgid, Duration::from_secs(70)) {
                problems.push(e);
            }
        }
        if let Err(e) = wait_remote_scripts_gone(&remote_dirs, Duration::from_secs(30)) {
            problems.push(e);
        }
        let text = fs::read_to_string(&log).unwrap_or_default();
        let where_ = if finished {
            exited_first += 1;
            "exited before the kill"
        } else {
            kills += 1;
            phase(&env, &text, &before)
        };
        *phases.entry((mode, where_)).or_default() += 1;

        // The store loads through certherd itself.
        let status = run(&env, &["status", "--json", "--offline"]);
        if serde_json::from_str::<serde_json::Value>(&status.stdout).is_err() {
            problems.push(format!(
                "status --json --offline: exit {}, not JSON:\n{}",
                status.code,
                status.all()
            ));
        }
        let kept = check_store(&env, &mut problems);
        for t in env.targets() {
            match pair_matches(&t.key, &t.fullchain) {
                Ok(sha) if kept.iter().any(|k| k.sha256 == sha) => {}
                Ok(sha) => problems.push(format!(
                    "target {} ({}): holds {sha}, which the store no longer keeps",
                    t.name,
                    t.fullchain.display()
                )),
                Err(e) => problems.push(format!("target {}: {e}", t.name)),
            }
        }
        // What HAProxy serves from memory (its key was checked by its
        // `commit`): a certificate the store keeps.
        match env.haproxy_serial() {
            Ok(serial) if kept.iter().any(|k| k.serial == serial) => {}
            Ok(serial) => problems.push(format!(
                "HAProxy holds serial {serial}, which the store does not keep"
            )),
            Err(e) => problems.push(e),
        }
        max_store_debris = max_store_debris.max(store_debris_count(&env));
        max_target_debris = max_target_debris.max(target_debris_count(&env));

        // The next unkilled run completes and ends verified.
        let next = run(&env, &["renew"]);
        if next.code != 0 {
            problems.push(format!(
                "the next renew exited {}:\n{}",
                next.code,
                next.all()
            ));
        } else {
            let current = cert_dir(&env).unwrap().join("current");
            let current_chain =
                pem_ders(&fs::read_to_string(current.join("fullchain.pem")).unwrap());
            let current_serial = cert_serial(&current_chain[0]).unwrap();
            for t in env.targets() {
                // The whole chain, leaf first, and the key that goes with it.
                let chain = pem_ders(&fs::read_to_string(&t.fullchain).unwrap_or_default());
                if chain != current_chain {
                    problems.push(format!(
                        "after the next renew, target {} ({}) does not hold the current certificate",
                        t.name,
                        t.fullchain.display()
                    ));
                }
                if let Err(e) = pair_matches(&t.key, &t.fullchain) {
                    problems.push(format!("after the next renew, target {}: {e}", t.name));
                }
                let links = layout() == "links";
                for p in [&t.key, &t.fullchain].into_iter().filter(|_| t.laid_out) {
                    let is_link = fs::symlink_metadata(p).is_ok_and(|m| m.is_symlink());
                    if is_link != links {
                        problems.push(format!(
                            "after the next renew, {} is {}a link (layout {})",
                            p.display(),
                            if is_link { "" } else { "not " },
                            layout()
                        ));
                    }
                }
            }
            // What kills left beside the targets (temp files hold keys) is
            // gone once each target has been written again.
            for dir in env.target_dirs() {
                let left = debris(&dir);
                if !left.is_empty() {
                    problems.push(format!(
                        "after the next renew, {} still holds {}",
                        dir.display(),
                        left.join(", ")
                    ));
                }
            }
            match env.haproxy_serial() {
                Ok(serial) if serial == current_serial => {}
                Ok(serial) => problems.push(format!(
                    "after the next renew, HAProxy holds serial {serial}, not the current \
                     {current_serial}"
                )),
                Err(e) => problems.push(e),
            }
            let list = env.haproxy.api("show ssl cert");
            if list.contains("# transaction") {
                problems.push(format!(
                    "after the next renew, HAProxy has a certificate transaction open:\n{list}"
                ));
            }
            if !next.stdout.contains("web (file): ")
                || !next.stdout.contains("lb-haproxy (haproxy): ")
                || next.stdout.contains("FAILED")
            {
                problems.push(format!("the next renew's report:\n{}", next.stdout));
            }
        }
        let how = if whole_group { "group" } else { "process" };
        if !problems.is_empty() {
            let entry = format!(
                "iteration {i} ({mode:?}, kill {how} after {delay:?}, phase {where_}):\n  {}\n--- killed run's log\n{text}",
                problems.join("\n  ")
            );
            eprintln!("FINDING {entry}");
            findings.push(entry);
        }
        if (i + 1) % 25 == 0 {
            eprintln!(
                "{} iterations, {kills} kills, {} findings, {:?}",
                i + 1,
                findings.len(),
                started.elapsed()
            );
        }
    }

    let done = phases.values().sum::<usize>();
    let mut summary = format!(
        "seed {seed}, layout {}; {done} iterations in {:.0?}: {kills} kills, {exited_first} runs \
         that ended before their kill; unkilled renew --force {renew_time:.2?}, run's first \
         pass {run_time:.2?}\nphases:\n",
        layout(),
        started.elapsed()
    );
    for ((mode, p), n) in &phases {
        summary.push_str(&format!("  {mode:?} {p}: {n}\n"));
    }
    summary.push_str(&format!(
        "most temp entries left at once: state directory {max_store_debris}, target folders {max_target_debris}\n\
         findings: {}\n",
        findings.len()
    ));
    for f in &findings {
        summary.push_str(&format!("- {}\n", f.lines().next().unwrap_or_default()));
        for l in f.lines().skip(1).take_while(|l| !l.starts_with("---")) {
            summary.push_str(&format!("  {l}\n"));
        }
    }
    eprintln!("{summary}");
    if let Ok(path) = std::env::var("CRASH_SUMMARY") {
        fs::write(path, &summary).unwrap();
    }
    assert!(findings.is_empty(), "{} findings (above)", findings.len());
}
