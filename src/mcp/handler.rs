//! The rmcp server handler: `initialize`, `tools/list` and `tools/call`,
//! each checked against the caller of the HTTP request it arrived in and
//! written to the audit log.

use std::sync::Arc;

use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock as Content,
    Implementation, InitializeRequestParams, InitializeResult, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::audit::{AuditGuard, Kind, Record};
use crate::identity::Caller;
use crate::policy::{Action, HTTP_REQUEST_TOOL, decide};

use super::builtin::{self, Route};
use super::error::{McpError, Surface};
use super::http_tool::{self, HttpArgs};
use super::{Shared, canonical, inspection};

/// One rmcp service instance (one per session); all share [`Shared`].
#[derive(Clone)]
pub struct Handler {
    shared: Arc<Shared>,
}

impl Handler {
    /// A handler over the device's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Handler { shared }
    }
}

/// The caller of the HTTP request this JSON-RPC request came in, as the
/// front put it there.
fn caller_of(context: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or(McpError::NoIdentity)
}

/// What let `caller` use the MCP device (`allowed_by_identity` or
/// `allowed_by_capability`) under `policy`, for the records of requests the
/// front has already admitted; `None` if the policy no longer admits it.
fn access_reason(policy: &crate::policy::Policy, caller: &Caller) -> Option<String> {
    let decision = decide(policy, caller, &Action::McpAccess);
    decision.permit.then(|| decision.reason.code().to_owned())
}

fn to_error_data(e: &McpError) -> ErrorData {
    let code = match e.surface() {
        Surface::JsonRpc(code) => code,
        _ => e.jsonrpc_code(),
    };
    ErrorData::new(
        rmcp::model::ErrorCode(code),
        e.to_string(),
        Some(json!({ "reason": e.code() })),
    )
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A successful tool result carrying `value` as text and as structured
/// content.
fn json_result(value: Value) -> CallToolResult {
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    let mut result = CallToolResult::success(vec![Content::text(text)]);
    result.structured_content = Some(value);
    result
}

impl rmcp::ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("portcullis", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Governed access to internal services. Call list_endpoints to see what you may use; \
             every call is checked against your tailnet identity and audited.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        let caller = caller_of(&context).map_err(|e| to_error_data(&e))?;
        let mut record = Record::new(Kind::McpInitialize)
            .with_caller(&caller)
            .with_device(&self.shared.device.name)
            .permit()
            .with_extra(
                "client",
                json!({
                    "name": request.client_info.name,
                    "version": request.client_info.version,
                    "protocol_version": request.protocol_version.as_str(),
                }),
            );
        record.status = Some("ok".to_owned());
        record.reason = access_reason(&self.shared.policy.load(), &caller);
        self.shared.audit.record(record);
        self.shared.upstreams.listen(context.peer.clone());
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let started = Instant::now();
        let caller = caller_of(&context).map_err(|e| to_error_data(&e))?;
        let policy = self.shared.policy.load();
        let tools = builtin::tools_for(&policy, &caller, &self.shared.upstreams);
        let mut record = Record::new(Kind::McpListTools)
            .with_caller(&caller)
            .with_device(&self.shared.device.name)
            .permit()
            .with_extra("tools", json!(tools.len()));
        record.status = Some("ok".to_owned());
        record.reason = access_reason(&policy, &caller);
        record.latency_us = Some(elapsed_us(started));
        self.shared.audit.record(record);
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let started = Instant::now();
        let caller = caller_of(&context).map_err(|e| to_error_data(&e))?;
        let name = request.name.to_string();
        let args = Value::Object(request.arguments.unwrap_or_default());
        let mut record = Record::tool_call(&caller, &self.shared.device.name, &name)
            .with_device(&self.shared.device.name);
        record.arg_digest = Some(canonical::digest(&args));
        // Written when dropped, so a cancelled call is recorded too.
        record.status = Some("cancelled".to_owned());
        let mut guard = AuditGuard::new(&self.shared.audit, record);
        // The audit gate: no call runs that cannot be recorded.
        let outcome = match guard.admit() {
            Ok(()) => self.call(&caller, &name, args, &mut guard).await,
            Err(why) => Err(McpError::AuditUnavailable(why)),
        };
        guard.latency_us = Some(elapsed_us(started));
        match outcome {
            Ok(result) => {
                guard.status = Some(
                    if result.is_error == Some(true) {
                        "tool_error"
                    } else {
                        "ok"
                    }
                    .to_owned(),
                );
                guard.finish();
                Ok(result.into())
            }
            Err(e) => {
                guard.status = Some(e.status().to_owned());
                if guard.decision.is_none() || matches!(e, McpError::Denied { .. }) {
                    let (code, detail) = (e.code().to_owned(), e.to_string());
                    guard.decision = Some(crate::audit::Decision::Deny);
                    guard.reason = Some(code);
                    guard.detail = Some(detail);
                } else {
                    guard.reason = Some(e.code().to_owned());
                    guard.detail = Some(e.to_string());
                }
                guard.finish();
                match e.surface() {
                    Surface::ToolError => Ok(CallToolResult::error(vec![Content::text(format!(
                        "{e} [{}]",
                        e.code()
                    ))])
                    .into()),
                    _ => Err(to_error_data(&e)),
                }
            }
        }
    }
}

impl Handler {
    /// One tool call, in the order of the data path: route, rate limit,
    /// authorize, inspect arguments, backend, inspect result.
    async fn call(
        &self,
        caller: &Caller,
        name: &str,
        mut args: Value,
        record: &mut Record,
    ) -> Result<CallToolResult, McpError> {
        let shared = &self.shared;
        let route = Route::of(name, &shared.upstreams)?;

        // Limits count only routable calls, so junk names make no buckets.
        if let Err(limited) = shared.limiter.check(&caller.node_id, name) {
            let mut hit =
                Record::rate_limited(caller, &shared.device.name).with_device(&shared.device.name);
            hit.tool = Some(name.to_owned());
            hit.detail = Some(format!("{} limit {}", limited.limit, limited.rate));
            shared.audit.record(hit);
            return Err(McpError::RateLimited(limited));
        }

        let policy = shared.policy.load();
        match &route {
            Route::Whoami => {
                record.decision = Some(crate::audit::Decision::Permit);
                record.reason = access_reason(&policy, caller);
                return Ok(json_result(builtin::whoami(
                    &policy,
                    caller,
                    &shared.upstreams,
                )));
            }
            Route::ListEndpoints => {
                record.decision = Some(crate::audit::Decision::Permit);
                record.reason = access_reason(&policy, caller);
                return Ok(json_result(builtin::list_endpoints(
                    &policy,
                    caller,
                    &shared.upstreams,
                )));
            }
            Route::HttpRequest | Route::Upstream { .. } => {}
        }

        // Authorize. http_request needs its arguments to know the endpoint.
        let http_args = match &route {
            Route::HttpRequest => Some(HttpArgs::parse(&args)?),
            _ => None,
        };
        let (endpoint, tool) = match (&route, &http_args) {
            (Route::Upstream { endpoint, tool }, _) => (endpoint.clone(), tool.clone()),
            (_, Some(a)) => (a.endpoint.clone(), HTTP_REQUEST_TOOL.to_owned()),
            _ => {
                return Err(McpError::UnknownTool {
                    name: name.to_owned(),
                });
            }
        };
        record.endpoint = Some(endpoint.clone());
        // The request is recorded whatever the decision, so a denied call
        // says what it asked for.
        if let Some(a) = &http_args {
            record.method = Some(a.method.clone());
            record.path = Some(a.path.split('?').next().unwrap_or_default().to_owned());
        }
        let decision = decide(
            &policy,
            caller,
            &Action::CallTool {
                endpoint: &endpoint,
                tool: &tool,
            },
        );
        if !decision.permit {
            return Err(McpError::Denied {
                reason: decision.reason,
            });
        }
        if let Some(a) = &http_args {
            authorize_http(&policy, caller, a)?;
        }
        record.decision = Some(crate::audit::Decision::Permit);
        record.reason = Some(decision.reason.code().to_owned());

        let endpoints = shared.endpoints.load();
        let settings = endpoints
            .by_name
            .get(&endpoint)
            .ok_or_else(|| McpError::Denied {
                reason: crate::policy::Reason::UnknownEndpoint {
                    endpoint: endpoint.clone(),
                },
            })?;

        // Inspect arguments before anything reaches the backend.
        let before = args.clone();
        inspection::arguments(&mut args, settings.inspect, record)?;

        let mut value = match &route {
            Route::HttpRequest => {
                let mut a = HttpArgs::parse(&args)?;
                if args != before {
                    // Redaction may have changed the path: decide again on
                    // what will actually be sent.
                    authorize_http(&policy, caller, &a)?;
                }
                a.endpoint.clone_from(&endpoint);
                let pinned = endpoints
                    .pinned
                    .get(&endpoint)
                    .ok_or_else(|| McpError::Http {
                        endpoint: endpoint.clone(),
                        why: "target was not resolved".to_owned(),
                    })?;
                let out = http_tool::send(settings, pinned, &a, caller, &shared.pool).await?;
                if let Some(status) = out.get("status") {
                    record.set_extra("http_status", status.clone());
                }
                out
            }
            _ => {
                let result = shared.upstreams.call(&endpoint, &tool, args).await?;
                serde_json::to_value(&result).map_err(|e| McpError::Upstream {
                    endpoint: endpoint.clone(),
                    why: e.to_string(),
                })?
            }
        };

        // Inspect the result before it reaches the caller.
        let notes = inspection::result(&mut value, settings.inspect, record)?;
        let mut result = match route {
            Route::HttpRequest => json_result(value),
            _ => {
                serde_json::from_value::<CallToolResult>(value).map_err(|e| McpError::Upstream {
                    endpoint: endpoint.clone(),
                    why: format!("result is not a tool result: {e}"),
                })?
            }
        };
        if !notes.injection.is_empty() {
            result.content.insert(
                0,
                Content::text(inspection::injection_notice(&notes.injection)),
            );
        }
        Ok(result)
    }
}

fn authorize_http(
    policy: &crate::policy::Policy,
    caller: &Caller,
    a: &HttpArgs,
) -> Result<(), McpError> {
    let target = a.target();
    let decision = decide(
        policy,
        caller,
        &Action::Http {
            endpoint: &a.endpoint,
            method: &a.method,
            path: &target,
        },
    );
    if decision.permit {
        Ok(())
    } else {
        Err(McpError::Denied {
            reason: decision.reason,
        })
    }
}
