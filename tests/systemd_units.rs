//! The shipped systemd units are valid (`systemd-analyze verify`) and say
//! what the agent relies on.

mod support;

use std::path::Path;

#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    let analyze = support::find_binary("systemd-analyze", "systemd");
    let dir = support::ScratchDir::new("certherd-units-");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // The units name the installed binary; verify checks that it exists.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/certherd", env!("CARGO_BIN_EXE_certherd"));
        std::fs::write(dir.path().join(&name), text).unwrap();
        units.push(dir.path().join(&name));
    }
    units.sort();
    assert_eq!(
        units
            .iter()
            .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        [
            "certherd-renew.service",
            "certherd-renew.timer",
            "certherd.service"
        ]
    );
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let agent = std::fs::read_to_string(src.join("certherd.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_CHOWN CAP_FOWNER",
        "WatchdogSec=5min",
    ] {
        assert!(
            agent.lines().any(|l| l == line),
            "certherd.service lacks {line}"
        );
    }
    assert!(agent
        .lines()
        .any(|l| l.starts_with("ReadWritePaths=/var/lib/certherd")));
}
