//! Hot reload of the endpoint file, on SIGHUP or when the file changes.
//!
//! A new file is validated, its targets pinned and its devices started
//! before anything in force changes; any failure leaves the running config
//! as it was and writes a `reload_rejected` record saying why. A success
//! writes a `reload` record with the old and new fingerprints and what
//! changed, then closes open connections the new policy refuses (each with
//! a `connection_revoked` record).
//!
//! The file is watched by polling its content hash rather than with
//! inotify: editors that replace the file, Kubernetes ConfigMap volumes
//! that swap a symlink, and network file systems all show up the same way,
//! and one small read every few seconds costs nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis::audit::{AuditLog, Record};
use portcullis::config::{self, Config};
use portcullis::devices::{Connector, Plan};
use portcullis::mcp::McpState;
use portcullis::policy::Policy;
use serde_json::json;
use sha2::{Digest, Sha256};

/// What started a reload.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The file's content changed.
    FileChanged,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::FileChanged => "file_changed",
        }
    }
}

/// The config in force and what a reload needs to replace it.
pub struct Reloader {
    path: PathBuf,
    config: Config,
    pinned: std::collections::HashMap<String, portcullis::backend::Pinned>,
    mcp: Option<Arc<McpState>>,
    audit: AuditLog,
    drain: Duration,
    /// Fingerprint (SHA-256) of the file content last looked at, applied or
    /// rejected, so a broken file is reported once, not at every poll.
    seen: Option<String>,
}

impl Reloader {
    /// Starts from the config `run` started with.
    pub fn new(
        path: &Path,
        config: Config,
        plan: &Plan,
        mcp: Option<Arc<McpState>>,
        audit: AuditLog,
        drain: Duration,
    ) -> Reloader {
        let seen = Some(config.fingerprint.clone());
        Reloader {
            path: path.to_owned(),
            config,
            pinned: plan.pinned().clone(),
            mcp,
            audit,
            drain,
            seen,
        }
    }

    /// Whether the file's content differs from what was last looked at.
    pub fn file_changed(&mut self) -> bool {
        let now = file_hash(&self.path);
        if now.is_some() && now != self.seen {
            self.seen = now;
            return true;
        }
        false
    }

    /// Reads, validates and applies the file. Never fails: a rejected file
    /// is logged and recorded, and the running config stays.
    pub async fn reload(&mut self, connector: &mut Connector, trigger: Trigger) {
        let old = self.config.fingerprint.clone();
        let new = match config::load(&self.path) {
            // The fingerprint is the SHA-256 of the bytes just read.
            Ok(new) => {
                self.seen = Some(new.fingerprint.clone());
                new
            }
            Err(e) => {
                self.seen = file_hash(&self.path);
                let why = match &e {
                    config::ConfigError::Invalid(diags) => diags
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    other => other.to_string(),
                };
                return self.reject(trigger, None, "invalid_file", &why);
            }
        };
        if new.fingerprint == old {
            tracing::info!(trigger = trigger.as_str(), "reload: file unchanged");
            return;
        }
        if let Some(what) = restart_required(&self.config, &new) {
            let why = format!("{what}; restart the connector to apply it");
            return self.reject(trigger, Some(&new), "restart_required", &why);
        }
        let plan = match Plan::prepare_reusing(&new, &self.pinned).await {
            Ok(plan) => plan,
            Err(e) => return self.reject(trigger, Some(&new), e.code(), &e.to_string()),
        };
        let pinned = plan.pinned().clone();
        let report = match connector
            .reload(plan, Policy::from_config(&new), self.drain)
            .await
        {
            Ok(report) => report,
            Err(e) => return self.reject(trigger, Some(&new), e.code(), &e.to_string()),
        };
        let (upstreams_started, upstreams_stopped) = match &self.mcp {
            Some(mcp) => mcp.apply_config(&new, pinned.clone()),
            None => Default::default(),
        };
        self.audit.set_fingerprint(&new.fingerprint);
        let added: Vec<&str> = report.added.iter().map(|d| d.hostname.as_str()).collect();
        let revoked = connector.recheck();
        tracing::info!(
            trigger = trigger.as_str(),
            old = %old,
            new = %new.fingerprint,
            ?added,
            removed = ?report.removed,
            updated = ?report.updated,
            revoked,
            "reload applied"
        );
        self.audit.record(
            Record::reload(new.fingerprint.clone())
                .with_extra("trigger", trigger.as_str().into())
                .with_extra("old_fingerprint", old.into())
                .with_extra("new_fingerprint", new.fingerprint.clone().into())
                .with_extra("added", json!(added))
                .with_extra("removed", json!(report.removed))
                .with_extra("updated", json!(report.updated))
                .with_extra("upstreams_started", json!(upstreams_started))
                .with_extra("upstreams_stopped", json!(upstreams_stopped))
                .with_extra("connections_revoked", revoked.into()),
        );
        super::say(format_args!(
            "reloaded {}: fingerprint {} (was {})",
            new.file_name, new.fingerprint, self.config.fingerprint
        ));
        self.pinned = pinned;
        self.config = new;
    }

    fn reject(&self, trigger: Trigger, new: Option<&Config>, code: &str, why: &str) {
        tracing::error!(
            trigger = trigger.as_str(),
            reason = code,
            "reload rejected; the running config stays in force:\n{why}"
        );
        super::say(format_args!(
            "reload rejected ({code}); still serving fingerprint {}:\n{why}",
            self.config.fingerprint
        ));
        let mut record = Record::reload_rejected(code, why)
            .with_extra("trigger", trigger.as_str().into())
            .with_extra("old_fingerprint", self.config.fingerprint.clone().into());
        let new = new
            .map(|c| c.fingerprint.clone())
            .or_else(|| self.seen.clone());
        if let Some(new) = new {
            record = record.with_extra("new_fingerprint", new.into());
        }
        self.audit.record(record);
    }
}

/// A change a running connector cannot apply, if any.
fn restart_required(old: &Config, new: &Config) -> Option<String> {
    if old.tailnet != new.tailnet {
        return Some("the [tailnet] section changed".to_owned());
    }
    match (&old.mcp, &new.mcp) {
        (None, None) => None,
        (Some(_), None) => Some("the [mcp] section was removed".to_owned()),
        (None, Some(_)) => Some("an [mcp] section was added".to_owned()),
        (Some(a), Some(b)) if a.hostname != b.hostname || a.port != b.port => {
            Some("the MCP device's name or port changed".to_owned())
        }
        (Some(a), Some(b)) if a.max_body_bytes != b.max_body_bytes => {
            Some("mcp.max_body_bytes changed".to_owned())
        }
        _ => None,
    }
}

/// Hex SHA-256 of the file's bytes (what [`Config::fingerprint`] is),
/// `None` if it cannot be read right now (for example mid-replace).
fn file_hash(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(Sha256::digest(&b)))
}
