//! Applying a new endpoint file to running devices without touching the
//! ones it does not change.
//!
//! A reload is prepared first and committed only if every step can succeed:
//!
//! ```text
//! prepare   start the nodes of added devices, listen on new ports
//!           (any failure: close what was started, nothing changed)
//! commit    swap the policy, swap changed devices' settings, serve added
//!           devices, retire removed ones (drain in the background)
//! recheck   close open connections the new policy no longer allows
//! ```
//!
//! A device whose endpoint stays keeps its node, its tailnet address and
//! its open connections; new connections use the new settings (target,
//! HTTP rules, timeouts). The `[tailnet]` section cannot change while
//! running: that is refused before anything is prepared.

use std::time::Duration;

use serde::Serialize;

use super::DeviceError;
use super::connector::{Connector, DeviceInfo, Plan, close_nodes};
use crate::policy::Policy;

/// Time beyond the drain deadline a retiring device may take to close.
const RETIRE_SLACK: Duration = Duration::from_secs(20);

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Devices started.
    pub added: Vec<DeviceInfo>,
    /// Hostnames of devices drained and stopped.
    pub removed: Vec<String>,
    /// Hostnames of devices whose settings were replaced in place.
    pub updated: Vec<String>,
}

impl Connector {
    /// Applies `plan` and `policy` (both from the same new file): starts
    /// added devices, updates changed ones in place, drains removed ones for
    /// up to `drain` in the background. On error nothing has changed.
    ///
    /// Call [`recheck`](Connector::recheck) afterwards (once every other
    /// part of the new config is in force too) to close connections the new
    /// policy refuses.
    pub async fn reload(
        &mut self,
        plan: Plan,
        policy: Policy,
        drain: Duration,
    ) -> Result<ReloadReport, DeviceError> {
        if plan.tailnet() != &self.tailnet {
            return Err(DeviceError::RestartRequired {
                what: "the [tailnet] section changed".to_owned(),
            });
        }
        let running = self.endpoint_devices();
        let (mut added, mut kept) = (Vec::new(), Vec::new());
        for (endpoint, pinned) in plan.into_devices() {
            if running.contains(&endpoint.hostname) {
                kept.push((endpoint, pinned));
            } else if self.is_running(&endpoint.hostname) {
                // A plugged-in service (the MCP device) already has the name.
                return Err(DeviceError::DuplicateDevice {
                    hostname: endpoint.hostname,
                });
            } else {
                added.push((endpoint, pinned));
            }
        }
        let removed: Vec<String> = running
            .into_iter()
            .filter(|h| !kept.iter().any(|(e, _)| &e.hostname == h))
            .collect();

        // Prepare: everything that can fail. A device added back while its
        // earlier self still drains waits for it to let go of its state.
        for (endpoint, _) in &added {
            self.wait_retired(&endpoint.hostname, drain + RETIRE_SLACK)
                .await;
        }
        let started = self.start_nodes(&added).await?;
        let mut new_ports = Vec::with_capacity(kept.len());
        for (endpoint, _) in &kept {
            match self.listen_new_ports(endpoint).await {
                Ok(listeners) => new_ports.push(listeners),
                Err(e) => {
                    close_nodes(started.into_iter().map(|(node, _)| node)).await;
                    return Err(e);
                }
            }
        }

        // Commit: nothing below fails.
        self.policy.store(std::sync::Arc::new(policy));
        let mut report = ReloadReport::default();
        for ((endpoint, pinned), listeners) in kept.into_iter().zip(new_ports) {
            if self.update_device(&endpoint, pinned, listeners) {
                report.updated.push(endpoint.hostname.clone());
            }
        }
        for ((endpoint, pinned), (node, listeners)) in added.into_iter().zip(started) {
            report
                .added
                .push(self.serve_endpoint(endpoint, pinned, node, listeners));
        }
        for hostname in removed {
            self.retire(&hostname, drain);
            report.removed.push(hostname);
        }
        Ok(report)
    }
}
