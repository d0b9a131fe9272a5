//! The `exec` target: a program that pushes the certificate wherever it
//! must go. It gets the certificate's facts and file paths as `CERTHERD_*`
//! environment variables; a non-zero exit or a timeout is a failed
//! deployment with the program's output in the report.

use crate::cert::{rfc3339, Bundle};
use crate::config::{ExecTarget, TargetConfig};
use crate::deploy::{BundleFiles, DeployError, Deployed};
use crate::process;

pub fn environment(
    cert_name: &str,
    target: &str,
    bundle: &Bundle,
    files: &BundleFiles,
) -> Vec<(String, String)> {
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    vec![
        ("CERTHERD_NAME".into(), cert_name.into()),
        ("CERTHERD_TARGET".into(), target.into()),
        ("CERTHERD_DOMAINS".into(), bundle.info.domains.join(" ")),
        ("CERTHERD_KEY".into(), path(files.key())),
        ("CERTHERD_CERT".into(), path(files.cert())),
        ("CERTHERD_CHAIN".into(), path(files.chain())),
        ("CERTHERD_FULLCHAIN".into(), path(files.fullchain())),
        ("CERTHERD_SERIAL".into(), bundle.info.serial.clone()),
        ("CERTHERD_SHA256".into(), bundle.info.sha256.clone()),
        (
            "CERTHERD_NOT_BEFORE".into(),
            rfc3339(bundle.info.not_before),
        ),
        ("CERTHERD_NOT_AFTER".into(), rfc3339(bundle.info.not_after)),
    ]
}

pub async fn run(
    cert_name: &str,
    target: &TargetConfig,
    e: &ExecTarget,
    bundle: &Bundle,
    files: &BundleFiles,
) -> Result<Deployed, DeployError> {
    let env = environment(cert_name, &target.name, bundle, files);
    let outcome = process::run(&e.command.argv, &env, e.command.timeout).await?;
    if outcome.success() {
        Ok(Deployed {
            command: Some(outcome),
        })
    } else {
        Err(DeployError::Command(outcome.summary()))
    }
}
