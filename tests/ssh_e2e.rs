//! The `ssh` target end to end: a real Pebble issues, certherd pushes the
//! files to real OpenSSH servers on loopback (one per "host") through the
//! system `ssh`, runs `reload` there; host keys are always checked, a
//! failed write leaves nothing behind, `--dry-run` checks each host.

mod support;

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use support::run::{
    mode, names_in, site_config, stored_dir, stored_sha256, yaml_list, Setup, SITE,
};
use support::sshd::Sshd;
use support::{sha256_tree, Pebble, PebbleOptions};

/// How one ssh target of the test configuration looks.
struct Host<'a> {
    name: String,
    sshd: &'a Sshd,
    known_hosts: PathBuf,
    fullchain: PathBuf,
    key: PathBuf,
    reload: Vec<String>,
}

impl<'a> Host<'a> {
    /// A host whose known_hosts file holds `known` and whose files go to
    /// its remote directory; reload touches `reloaded` there.
    fn new(setup: &Setup, name: &str, sshd: &'a Sshd, known: &str) -> Host<'a> {
        let known_hosts = setup.dir.path().join(format!("known_hosts-{name}"));
        fs::write(&known_hosts, known).unwrap();
        let dir = sshd.remote_dir();
        Host {
            name: name.to_string(),
            sshd,
            known_hosts,
            fullchain: dir.join("site.pem"),
            key: dir.join("site.key"),
            reload: vec!["touch".into(), dir.join("reloaded").display().to_string()],
        }
    }

    fn trusted(setup: &Setup, name: &str, sshd: &'a Sshd) -> Host<'a> {
        Host::new(setup, name, sshd, &format!("{}\n", sshd.known_hosts_line()))
    }

    fn yaml(&self) -> String {
        self.sshd.target_yaml(
            &self.name,
            &self.known_hosts,
            &self.fullchain,
            &self.key,
            &format!("        reload: {}\n", yaml_list(&self.reload)),
        )
    }
}

fn config(pebble: &Pebble, setup: &Setup, hosts: &[Host]) -> String {
    let targets: String = hosts.iter().map(Host::yaml).collect();
    site_config(pebble, setup, &[SITE], &targets)
}

#[test]
fn renew_pushes_one_certificate_to_a_fleet_of_ten_hosts() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let fleet: Vec<Sshd> = (0..10).map(|_| Sshd::start()).collect();
    let hosts: Vec<Host> = fleet
        .iter()
        .enumerate()
        .map(|(i, s)| Host::trusted(&setup, &format!("lb{i}"), s))
        .collect();
    setup.write_config(&config(&pebble, &setup, &hosts));
    setup.run(&["check"]).assert_code(0);

    let start = Instant::now();
    let run = setup.run(&["renew"]);
    let elapsed = start.elapsed();
    eprintln!("renew to 10 ssh hosts took {elapsed:?}");
    run.assert_code(0);

    let sha = stored_sha256(&setup);
    let stored = stored_dir(&setup);
    let fullchain = fs::read(stored.join("fullchain.pem")).unwrap();
    let key = fs::read(stored.join("privkey.pem")).unwrap();
    for h in &hosts {
        assert!(
            run.stdout.contains(&format!(
                "  {} (ssh): deployed; reload `{}` exited 0",
                h.name,
                h.reload.join(" ")
            )),
            "{}",
            run.stdout
        );
        assert_eq!(fs::read(&h.fullchain).unwrap(), fullchain, "{}", h.name);
        assert_eq!(fs::read(&h.key).unwrap(), key, "{}", h.name);
        assert_eq!(mode(&h.key), 0o600);
        assert_eq!(mode(&h.fullchain), 0o644);
        assert_eq!(
            names_in(&h.sshd.remote_dir()),
            ["reloaded", "site.key", "site.pem"],
            "the reload ran remotely and no temp file is left"
        );
    }
    assert_eq!(
        support::leaf_sha256_of_pem(&String::from_utf8(fullchain).unwrap()),
        sha
    );
    let all = run.all();
    assert!(!all.contains("PRIVATE KEY"), "{all}");

    // Nothing due, deployment recorded: no connection, no reload.
    for h in &hosts {
        fs::remove_file(h.sshd.remote_dir().join("reloaded")).unwrap();
    }
    setup.run(&["renew"]).assert_code(0);
    for h in &hosts {
        assert!(!h.sshd.remote_dir().join("reloaded").exists());
    }

    // `deploy` pushes again, to every host.
    setup.run(&["deploy"]).assert_code(0);
    for h in &hosts {
        assert!(h.sshd.remote_dir().join("reloaded").exists(), "{}", h.name);
    }
}

#[test]
fn unknown_or_changed_host_keys_are_refused_and_nothing_is_written() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let (a, b) = (Sshd::start(), Sshd::start());
    let unknown = Host::new(&setup, "unknown", &a, "");
    let changed = Host::new(
        &setup,
        "changed",
        &b,
        &format!("{}\n", b.wrong_known_hosts_line()),
    );
    setup.write_config(&config(&pebble, &setup, &[unknown, changed]));

    let run = setup.run(&["renew"]);
    run.assert_code(1);
    let out = run.all();
    let kh = |n: &str| setup.dir.path().join(format!("known_hosts-{n}"));
    assert!(
        out.contains(&format!(
            "  unknown (ssh): FAILED: ssh target \"unknown\": host key for [127.0.0.1]:{} is not in {}; refusing to connect",
            a.port(),
            kh("unknown").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  changed (ssh): FAILED: ssh target \"changed\": host key for [127.0.0.1]:{} does not match the one in {} (it changed); refusing to connect",
            b.port(),
            kh("changed").display()
        )),
        "{out}"
    );
    assert!(
        out.contains("Host key verification failed"),
        "ssh's own words: {out}"
    );
    for s in [&a, &b] {
        assert!(
            names_in(&s.remote_dir()).is_empty(),
            "nothing written remotely"
        );
    }
    // Nothing was accepted into the known_hosts files either.
    assert_eq!(fs::read_to_string(kh("unknown")).unwrap(), "");
    assert_eq!(
        fs::read_to_string(kh("changed")).unwrap(),
        format!("{}\n", b.wrong_known_hosts_line())
    );
}

#[test]
fn a_failed_remote_write_leaves_the_old_files_and_no_temp_files() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let sshd = Sshd::start();
    let dir = sshd.remote_dir();
    fs::write(dir.join("site.pem"), "old certificate\n").unwrap();
    let mut host = Host::trusted(&setup, "lb", &sshd);
    host.key = dir.join("missing").join("site.key");
    setup.write_config(&config(&pebble, &setup, &[host]));
    let before = sha256_tree(&dir);

    let run = setup.run(&["renew"]);
    run.assert_code(1);
    let out = run.all();
    assert!(
        out.contains(&format!(
            "  lb (ssh): FAILED: ssh target \"lb\": writing the files on [127.0.0.1]:{} failed:",
            sshd.port()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "certherd: cannot write {}/missing/site.key",
            dir.display()
        )),
        "{out}"
    );
    assert_eq!(
        sha256_tree(&dir),
        before,
        "the certificate did not change without its key, no temp file is left, no reload ran"
    );
}

#[test]
fn dry_run_checks_each_host_and_writes_nothing() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let (a, b, c, d) = (Sshd::start(), Sshd::start(), Sshd::start(), Sshd::start());
    let good = Host::trusted(&setup, "good", &a);
    let mut no_dir = Host::trusted(&setup, "nodir", &b);
    no_dir.key = b.remote_dir().join("missing").join("site.key");
    let mut no_reload = Host::trusted(&setup, "noreload", &c);
    no_reload.reload = vec!["certherd-no-such-reload".into(), "now".into()];
    let stranger = Host::new(&setup, "stranger", &d, "");
    setup.write_config(&config(
        &pebble,
        &setup,
        &[good, no_dir, no_reload, stranger],
    ));

    let run = setup.run(&["renew", "--dry-run"]);
    run.assert_code(1);
    let out = run.all();
    assert!(out.contains("  good (ssh): preflight passed"), "{out}");
    assert!(
        out.contains(&format!(
            "  nodir (ssh): preflight FAILED: on [127.0.0.1]:{}: directory {}/missing does not exist",
            b.port(),
            b.remote_dir().display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  noreload (ssh): preflight FAILED: on [127.0.0.1]:{}: reload program \"certherd-no-such-reload\" is not found",
            c.port()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  stranger (ssh): preflight FAILED: host key for [127.0.0.1]:{} is not in",
            d.port()
        )),
        "{out}"
    );
    for s in [&a, &b, &c, &d] {
        assert!(
            names_in(&s.remote_dir()).is_empty(),
            "dry run wrote remotely"
        );
    }
    assert!(!setup.state_dir().exists());
}

#[test]
fn ssh_targets_are_checked_strictly_with_positions() {
    let setup = Setup::new();
    setup.write_config(
        "acme:
  directory: letsencrypt
challenges:
  standalone:
    type: http-01
    listen: \"[::]:80\"
certificates:
  example:
    domains: [example.com]
    challenge: standalone
    targets:
      - name: lb1
        type: ssh
        host: -oProxyCommand=evil
        port: 0
        user: a@b
        fullchain: certs/example.pem
        key: /etc/tls/example.key
        mode: \"0640\"
        password: hunter2
      - name: lb2
        type: ssh
        key: /etc/tls/example.key
      - name: lb3
        type: ssh
        host: lb3.example.com
        port: 2222
        jump: deploy@bastion.example.com:22
        identity: id_ed25519
        known_hosts: known_hosts
        combined: /etc/haproxy/certs/example.pem
        reload: [sudo, systemctl, reload, haproxy]
",
    );
    let run = setup.run(&["check"]);
    run.assert_code(2);
    let path = setup.config_path();
    let p = path.display();
    for expected in [
        format!("{p}:20:9: unknown key `password` in target \"lb1\" (expected one of: name, type, host, port, user, identity, known_hosts, jump, ssh_config, cert, chain, fullchain, key, combined, pkcs12, pkcs12_password, pkcs12_name, mode, owner, group, layout, reload, reload_timeout, verify)"),
        format!("{p}:14:15: `host` must be a host name or address, not \"-oProxyCommand=evil\""),
        format!("{p}:15:15: `port` must be a port number from 1 to 65535, not \"0\""),
        format!("{p}:16:15: `user` \"a@b\" is not a valid user name"),
        format!("{p}:17:20: `fullchain` is a file on the remote host and must be an absolute path, not \"certs/example.pem\""),
        format!("{p}:21:9: missing key `host` in target \"lb2\""),
    ] {
        assert!(run.stderr.contains(&expected), "{expected}\nnot in:\n{}", run.stderr);
    }
    assert_eq!(
        run.stderr.matches(&p.to_string()).count(),
        6,
        "{}",
        run.stderr
    );
}

#[test]
fn layout_links_turns_the_remote_files_into_links_switched_at_once() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let sshd = Sshd::start();
    let dir = sshd.remote_dir();
    let host = Host::trusted(&setup, "lb", &sshd);
    let plain = config(&pebble, &setup, &[host]);
    setup.write_config(&plain);
    setup.run(&["renew"]).assert_code(0);
    let first = stored_sha256(&setup);
    assert!(fs::symlink_metadata(dir.join("site.key"))
        .unwrap()
        .is_file());

    // Not due, deployment recorded: nothing to do.
    let idle = setup.run(&["renew"]);
    idle.assert_code(0);
    assert!(
        idle.stdout
            .contains("  lb (ssh): already held the current certificate"),
        "{}",
        idle.stdout
    );

    // The same host, now with `layout: links`: the target's configuration
    // changed, so the next renew deploys the same certificate again, laid
    // out as links.
    let links = plain.replace("        reload:", "        layout: links\n        reload:");
    setup.write_config(&links);
    setup.run(&["renew", "--dry-run"]).assert_code(0);
    let relaid = setup.run(&["renew"]);
    relaid.assert_code(0);
    assert!(
        relaid.stdout.contains("  lb (ssh): deployed"),
        "{}",
        relaid.stdout
    );
    assert_eq!(stored_sha256(&setup), first, "not renewed");
    let stored = stored_dir(&setup);
    assert_eq!(
        fs::read(dir.join("site.key")).unwrap(),
        fs::read(stored.join("privkey.pem")).unwrap()
    );
    assert_eq!(
        fs::read(dir.join("site.pem")).unwrap(),
        fs::read(stored.join("fullchain.pem")).unwrap()
    );
    assert_eq!(
        fs::read_link(dir.join("site.key")).unwrap(),
        PathBuf::from(".site.pem.certherd/current/key.pem")
    );
    assert_eq!(
        fs::read_link(dir.join("site.pem")).unwrap(),
        PathBuf::from(".site.pem.certherd/current/fullchain.pem")
    );
    let folder = dir.join(".site.pem.certherd");
    let versions = |folder: &std::path::Path| -> Vec<String> {
        names_in(folder)
            .into_iter()
            .filter(|n| n != "current")
            .collect()
    };
    let v = versions(&folder);
    assert_eq!(
        v.len(),
        1,
        "one version, no copy of the old files left: {v:?}"
    );
    assert_eq!(
        fs::read_link(folder.join("current")).unwrap(),
        PathBuf::from(&v[0])
    );
    assert_eq!(mode(&folder.join(&v[0]).join("key.pem")), 0o600);
    assert_eq!(mode(&folder.join(&v[0]).join("fullchain.pem")), 0o644);
    assert_eq!(
        names_in(&dir),
        [".site.pem.certherd", "reloaded", "site.key", "site.pem"],
        "no temp file or link left"
    );

    // Once more: a new version replaces the old one.
    setup.run(&["renew", "--force"]).assert_code(0);
    assert_eq!(
        fs::read(dir.join("site.key")).unwrap(),
        fs::read(stored_dir(&setup).join("privkey.pem")).unwrap()
    );
    let w = versions(&folder);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_ne!(w, v);
}

#[test]
fn a_jump_host_from_a_dedicated_ssh_config_is_gone_through() {
    let pebble = Pebble::start(PebbleOptions::default());
    let setup = Setup::new();
    let bastion = Sshd::start();
    let target = Sshd::start();
    // The jump host is configured only in certherd's own ssh_config (ssh
    // hands `-F` on to the jump connection); the target host by its keys.
    let bastion_kh = setup.dir.path().join("known_hosts-bastion");
    fs::write(&bastion_kh, format!("{}\n", bastion.known_hosts_line())).unwrap();
    let ssh_config = setup.dir.path().join("ssh_config");
    fs::write(
        &ssh_config,
        format!(
            "Host bastion\n  HostName 127.0.0.1\n  Port {}\n  IdentityFile {}\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n",
            bastion.port(),
            bastion.client_key_path().display(),
            bastion_kh.display()
        ),
    )
    .unwrap();
    let host = Host::trusted(&setup, "lb", &target);
    let yaml = host.yaml().replace(
        "        fullchain:",
        &format!(
            "        jump: bastion\n        ssh_config: {}\n        fullchain:",
            ssh_config.display()
        ),
    );
    setup.write_config(&site_config(&pebble, &setup, &[SITE], &yaml));
    let logins = |s: &Sshd| s.log().matches("Accepted publickey").count();
    assert_eq!(logins(&bastion), 0);

    setup.run(&["renew", "--dry-run"]).assert_code(0);
    let run = setup.run(&["renew"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains("  lb (ssh): deployed"),
        "{}",
        run.stdout
    );
    assert_eq!(
        fs::read(&host.fullchain).unwrap(),
        fs::read(stored_dir(&setup).join("fullchain.pem")).unwrap()
    );
    // Every connection to the target (dry-run check, write, reload) went
    // through the bastion.
    assert_eq!(logins(&target), 3, "{}", target.log());
    assert_eq!(logins(&bastion), 3, "{}", bastion.log());

    // A bastion whose key is not the one known: refused, nothing written.
    fs::write(
        &bastion_kh,
        format!("{}\n", bastion.wrong_known_hosts_line()),
    )
    .unwrap();
    let before = fs::read(&host.key).unwrap();
    let refused = setup.run(&["deploy"]);
    refused.assert_code(1);
    assert!(
        refused.stdout.contains(&format!(
            "  lb (ssh): FAILED: ssh target \"lb\": host key for [127.0.0.1]:{} (the jump host) \
             does not match the one in {} (it changed); refusing to connect",
            bastion.port(),
            bastion_kh.display()
        )),
        "{}",
        refused.stdout
    );
    assert_eq!(fs::read(&host.key).unwrap(), before);
}
