//! Start-up: every node of a connector, endpoint devices and plugged-in
//! services alike, joins the tailnet in one bounded batch.
//!
//! Joining is mostly waiting on the control server (registration, the
//! first network map, a netcheck), so nodes join in parallel; at most
//! [`Options::start_concurrency`](super::Options) at once, so a connector
//! of hundreds of devices does not put hundreds of registrations on the
//! control server in the same instant.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::connector::{Connector, DeviceInfo, Options, Plan};
use super::ctx::SharedPolicy;
use super::{DeviceError, Service};
use crate::audit::AuditLog;

/// Builds a service device's [`Service`] once its node is up, from what
/// the device turned out to be (names, addresses).
pub type MakeService = Box<dyn FnOnce(&DeviceInfo) -> Result<Arc<dyn Service>, String> + Send>;

/// A plugged-in device (for example the governed MCP endpoint) started
/// together with the endpoint devices.
pub struct ServiceDevice {
    /// Tailnet hostname.
    pub hostname: String,
    /// Tailnet ports it listens on.
    pub ports: Vec<u16>,
    /// Builds its service once the node is up.
    pub make: MakeService,
}

impl std::fmt::Debug for ServiceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDevice")
            .field("hostname", &self.hostname)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Starts one node per planned device and per service in `services`,
    /// all in one bounded parallel batch, and listens on each device's
    /// ports. If any device fails to start (or a service cannot be built),
    /// the nodes already started are closed and the error names the device.
    pub async fn start_with(
        plan: Plan,
        services: Vec<ServiceDevice>,
        auth_key: &str,
        policy: SharedPolicy,
        audit: AuditLog,
        options: Options,
    ) -> Result<Connector, DeviceError> {
        let mut connector = Connector::empty(&plan, auth_key, policy, audit, options);
        let devices = plan.into_devices();
        let mut seen = HashSet::new();
        let hostnames = devices
            .iter()
            .map(|(e, _)| e.hostname.as_str())
            .chain(services.iter().map(|s| s.hostname.as_str()));
        for hostname in hostnames {
            if !seen.insert(hostname) {
                return Err(DeviceError::DuplicateDevice {
                    hostname: hostname.to_owned(),
                });
            }
        }

        let began = Instant::now();
        let total = devices.len() + services.len();
        connector.progress(format_args!("starting {total} devices..."));
        let specs: Vec<(&str, &[u16])> = devices
            .iter()
            .map(|(e, _)| (e.hostname.as_str(), e.ports.as_slice()))
            .chain(
                services
                    .iter()
                    .map(|s| (s.hostname.as_str(), s.ports.as_slice())),
            )
            .collect();
        let endpoints = devices.len();
        let mut started = connector
            .start_specs(&specs, |i, node| {
                devices
                    .get(i)
                    .map(|(endpoint, _)| super::connector::info_of(endpoint, node).to_string())
            })
            .await?;
        let service_nodes = started.split_off(endpoints);
        for ((endpoint, pinned), (node, listeners)) in devices.into_iter().zip(started) {
            connector.serve_endpoint(endpoint, pinned, node, listeners);
        }
        let mut services = services.into_iter().zip(service_nodes);
        while let Some((service, (node, listeners))) = services.next() {
            let served = connector
                .serve_service(
                    &service.hostname,
                    &service.ports,
                    node,
                    listeners,
                    service.make,
                )
                .await;
            if let Err(e) = served {
                super::connector::close_nodes(services.map(|(_, (node, _))| node)).await;
                connector.shutdown(std::time::Duration::ZERO).await;
                return Err(e);
            }
        }
        connector.progress(format_args!(
            "{} devices up in {:.1}s",
            connector.devices().len(),
            began.elapsed().as_secs_f64()
        ));
        Ok(connector)
    }
}
