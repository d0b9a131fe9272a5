//! A real PowerDNS Authoritative server per test, with its HTTP API on, for
//! the dns-01 `exec` hooks in `examples/dns-hooks/powerdns/`.
//!
//! `pdns_server` runs in the foreground as a child of the test, with its
//! config, control socket and gsqlite3 database in one scratch directory, its
//! DNS and webserver on free loopback ports. The database is created from the
//! schema `pdns-backend-sqlite3` ships, with the `sqlite3` CLI. Start-up is
//! proven by answers only this server can give: the API with this run's random
//! key, then the zone [`ZONE`] (created through that API) served over DNS. A
//! port lost to a race is retried on fresh ports.
//!
//! DNS answers are read with `dig` (bind9-dnsutils), an independent client.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::process::{
    block_on, describe_log, poll_until, run_with_timeout, ChildGuard, ScratchDir,
};
use super::{find_binary, free_ports};

/// The zone every [`PowerDns`] starts with (SOA and NS only).
pub const ZONE: &str = "example.test.";
/// What to install when PowerDNS or its sqlite backend is missing.
const PACKAGES: &str = "pdns-server pdns-backend-sqlite3";
/// The schema pdns-backend-sqlite3 installs (Debian's path).
const SCHEMA: &str = "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql";
/// How long a started pdns_server gets to answer on both ports.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: usize = 3;
/// Bound on each HTTP request and each `dig` or `sqlite3` run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `pdns_server`; killed (by the pid this code spawned) on drop.
pub struct PowerDns {
    // Declared first: killed before the directory goes.
    server: ChildGuard,
    dir: ScratchDir,
    endpoints: Endpoints,
}

/// Where one run of `pdns_server` answers, and its key.
struct Endpoints {
    dns_port: u16,
    api_port: u16,
    api_key: String,
}

enum StartError {
    PortTaken(String),
    Fatal(String),
}

impl PowerDns {
    /// Starts PowerDNS with an empty gsqlite3 database and creates [`ZONE`]
    /// through its API. Panics (with the server's log) if it does not answer
    /// within 20 s, or naming the packages to install if it is missing.
    pub fn start() -> PowerDns {
        let pdns_server = find_binary("pdns_server", PACKAGES);
        let sqlite3 = find_binary("sqlite3", "sqlite3");
        assert!(
            Path::new(SCHEMA).is_file(),
            "{SCHEMA} is missing: run scripts/install-deps (apt-get install {PACKAGES})"
        );
        let dir = ScratchDir::new("certherd-pdns-");

        let database = dir.path().join("pdns.sqlite3");
        let out = run_with_timeout(
            Command::new(&sqlite3)
                .arg("-bail")
                .arg(&database)
                .arg(format!(".read {SCHEMA}")),
            REQUEST_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("create the PowerDNS database: {e}"));
        assert!(
            out.status.success(),
            "sqlite3 {} .read {SCHEMA}: {}\n{}",
            database.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // pdns_server reads pdns.conf from --config-dir: the backend's settings
        // are there, the rest on the command line.
        write(
            &dir.path().join("pdns.conf"),
            &format!(
                "launch=gsqlite3\ngsqlite3-database={}\n",
                database.display()
            ),
        );

        let api_key = format!("certherd-test-{:032x}", rand::random::<u128>());
        let log = dir.path().join("pdns.log");
        let mut last_error = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let ports = free_ports(2);
            let endpoints = Endpoints {
                dns_port: ports[0],
                api_port: ports[1],
                api_key: api_key.clone(),
            };
            let mut server = ChildGuard::spawn(
                "pdns_server",
                Command::new(&pdns_server)
                    .arg(format!("--config-dir={}", dir.path().display()))
                    .arg(format!("--socket-dir={}", dir.path().display()))
                    .arg("--local-address=127.0.0.1")
                    .arg(format!("--local-port={}", endpoints.dns_port))
                    .args(["--api=yes", &format!("--api-key={api_key}")])
                    .args(["--webserver=yes", "--webserver-address=127.0.0.1"])
                    .arg(format!("--webserver-port={}", endpoints.api_port))
                    .arg("--webserver-allow-from=127.0.0.0/8")
                    .args(["--daemon=no", "--guardian=no", "--disable-syslog"])
                    .args(["--write-pid=no", "--security-poll-suffix="]),
                &log,
            );
            match wait_ready(&mut server, &endpoints) {
                Ok(()) => {
                    return PowerDns {
                        server,
                        dir,
                        endpoints,
                    }
                }
                Err(StartError::PortTaken(why)) => {
                    eprintln!(
                        "pdns_server start attempt {attempt} lost a port race ({why}); retrying"
                    );
                    last_error = why;
                }
                Err(StartError::Fatal(why)) => {
                    panic!("PowerDNS did not start: {why}\n{}", server.describe_log())
                }
            }
        }
        panic!(
            "PowerDNS did not start in {START_ATTEMPTS} attempts on fresh ports; last: {last_error}\n{}",
            describe_log("pdns_server", &log)
        );
    }

    /// The webserver, what `PDNS_API_URL` takes: `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        self.endpoints.api_url()
    }

    /// This run's API key (random).
    pub fn api_key(&self) -> &str {
        &self.endpoints.api_key
    }

    /// Where it answers DNS, over UDP and TCP.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.endpoints.dns_port))
    }

    /// The environment the hooks in `examples/dns-hooks/powerdns/` need to
    /// reach this server: `PDNS_API_URL`, `PDNS_API_KEY`, `PDNS_SERVER_ID`.
    pub fn hook_env(&self) -> Vec<(String, String)> {
        vec![
            ("PDNS_API_URL".to_owned(), self.api_url()),
            ("PDNS_API_KEY".to_owned(), self.api_key().to_owned()),
            ("PDNS_SERVER_ID".to_owned(), "localhost".to_owned()),
        ]
    }

    /// The TXT strings served at `name` over DNS (asked with `dig`, no
    /// recursion), sorted; empty when the name has no TXT RRset (NOERROR
    /// without answers, or NXDOMAIN). Panics on any other answer. Each record
    /// is expected to hold one string without spaces, quotes or escapes.
    pub fn txt(&self, name: &str) -> Vec<String> {
        let out = self
            .endpoints
            .dig(name, "TXT")
            .unwrap_or_else(|e| panic!("{e}\n{}", self.describe_log()));
        let status = out
            .lines()
            .find_map(|l| l.split("status: ").nth(1))
            .and_then(|s| s.split(',').next())
            .unwrap_or_else(|| panic!("dig TXT {name}: no status in\n{out}"));
        assert!(
            matches!(status, "NOERROR" | "NXDOMAIN"),
            "dig TXT {name} @{}: status {status}\n{out}\n{}",
            self.dns_addr(),
            self.describe_log()
        );
        let mut values: Vec<String> = out
            .lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                assert!(
                    fields.len() == 5 && fields[3] == "TXT",
                    "dig TXT {name}: unexpected answer line {l:?}\n{out}"
                );
                fields[4].trim_matches('"').to_owned()
            })
            .collect();
        values.sort();
        values
    }

    /// The TXT RRset at `name` as the API stores it: its TTL and each record's
    /// `content` (quoted, as PowerDNS keeps TXT data), sorted; `None` when
    /// there is no such RRset.
    pub fn api_txt(&self, name: &str) -> Option<(u64, Vec<String>)> {
        let zone = self.api(
            reqwest::Method::GET,
            &format!("/zones/{ZONE}?rrset_name={name}&rrset_type=TXT"),
            None,
        );
        let rrsets = zone["rrsets"].as_array().expect("zone has rrsets");
        let mut found = rrsets.iter().filter(|r| {
            r["type"] == "TXT"
                && r["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        let rrset = found.next()?;
        assert!(found.next().is_none(), "two TXT RRsets at {name}: {zone}");
        let mut records: Vec<String> = rrset["records"]
            .as_array()
            .expect("rrset has records")
            .iter()
            .map(|r| r["content"].as_str().expect("content").to_owned())
            .collect();
        records.sort();
        Some((rrset["ttl"].as_u64().expect("ttl"), records))
    }

    /// Sets (REPLACE) the TXT RRset at `name` in [`ZONE`] to `contents`, each
    /// already quoted, like a record made by hand outside certherd.
    pub fn set_txt(&self, name: &str, ttl: u32, contents: &[&str]) {
        let records: Vec<_> = contents
            .iter()
            .map(|c| serde_json::json!({ "content": c, "disabled": false }))
            .collect();
        self.api(
            reqwest::Method::PATCH,
            &format!("/zones/{ZONE}"),
            Some(serde_json::json!({ "rrsets": [{
                "name": name, "type": "TXT", "ttl": ttl,
                "changetype": "REPLACE", "records": records,
            }]})),
        );
    }

    /// The scratch directory holding the config, database and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        self.server.log_path()
    }

    /// The log's last lines, for failure messages.
    pub fn describe_log(&self) -> String {
        self.server.describe_log()
    }

    /// A request to `/api/v1/servers/localhost<path>` with this run's key;
    /// panics unless it succeeds. Returns the JSON body (`null` when empty).
    fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        self.endpoints
            .api(method.clone(), path, body)
            .unwrap_or_else(|e| {
                panic!("PowerDNS API {method} {path}: {e}\n{}", self.describe_log())
            })
    }
}

impl Endpoints {
    fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// A request to `/api/v1/servers/localhost<path>` with the key. Returns
    /// the JSON body (`null` when empty), or why it failed.
    fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let url = format!("{}/api/v1/servers/localhost{path}", self.api_url());
        let key = self.api_key.clone();
        block_on(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .map_err(|e| format!("build HTTP client: {e}"))?;
            let mut request = client.request(method, &url).header("X-API-Key", key);
            if let Some(body) = body {
                request = request
                    .header("Content-Type", "application/json")
                    .body(body.to_string());
            }
            let response = request.send().await.map_err(|e| format!("{e:#}"))?;
            let status = response.status();
            let text = response
                .text()
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if !status.is_success() {
                return Err(format!("HTTP {status}: {text}"));
            }
            if text.is_empty() {
                return Ok(serde_json::Value::Null);
            }
            serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))
        })
    }

    /// `dig` (no recursion) at this server for `name`/`rtype`: the header
    /// comments and the answer section.
    fn dig(&self, name: &str, rtype: &str) -> Result<String, String> {
        let dig = find_binary("dig", "bind9-dnsutils");
        let out = run_with_timeout(
            Command::new(dig)
                .arg("@127.0.0.1")
                .args(["-p", &self.dns_port.to_string()])
                .args(["+norecurse", "+noall", "+comments", "+answer"])
                .args(["+time=1", "+tries=1"])
                .args([name, rtype]),
            REQUEST_TIMEOUT,
        )
        .map_err(|e| format!("dig {rtype} {name}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "dig {rtype} {name} @127.0.0.1 -p {}: {}\n{text}{}",
                self.dns_port,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(text)
    }
}

/// Polls until the API takes this run's key, then creates [`ZONE`] through
/// it and polls until the zone's SOA is served over DNS.
fn wait_ready(server: &mut ChildGuard, endpoints: &Endpoints) -> Result<(), StartError> {
    let mut zone_created = false;
    // Ok(Some(_)): stop polling with that error; Ok(None): ready.
    let outcome = poll_until("pdns_server's API and DNS", READY_TIMEOUT, || {
        // Exit status first: a server that exits after a bind failure has
        // logged it by then. A webserver that cannot bind only logs it.
        let exited = server.exit_status();
        if let Some(line) = server
            .log_text()
            .lines()
            .find(|l| l.contains("Address already in use"))
        {
            return Ok(Some(StartError::PortTaken(line.to_owned())));
        }
        if let Some(status) = exited {
            return Ok(Some(StartError::Fatal(format!(
                "pdns_server exited early ({status})"
            ))));
        }
        if !zone_created {
            let info = endpoints
                .api(reqwest::Method::GET, "", None)
                .map_err(|e| format!("API: {e}"))?;
            if info["daemon_type"] != "authoritative" {
                return Err(format!("API: not an authoritative server: {info}"));
            }
            let zone = serde_json::json!({
                "name": ZONE,
                "kind": "Native",
                "nameservers": [format!("ns1.{ZONE}")],
            });
            if let Err(e) = endpoints.api(reqwest::Method::POST, "/zones", Some(zone)) {
                return Ok(Some(StartError::Fatal(format!("create zone {ZONE}: {e}"))));
            }
            zone_created = true;
        }
        let soa = endpoints.dig(ZONE, "SOA")?;
        if soa.contains("status: NOERROR") && soa.contains(&format!("hostmaster.{ZONE}")) {
            Ok(None)
        } else {
            Err(format!("DNS: no SOA for {ZONE} yet:\n{soa}"))
        }
    });
    match outcome {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(e),
        Err(e) => Err(StartError::Fatal(e)),
    }
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
