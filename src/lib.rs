//! Portcullis: the only door between AI agents on a tailnet and a company's
//! private services.
//!
//! One process embeds several tailnet nodes. Every endpoint listed in
//! `endpoints.toml` becomes its own virtual device; one more device serves a
//! governed MCP endpoint. Whatever is not in the file does not exist.
//!
//! # Module map
//!
//! General pieces (they import nothing below the line):
//!
//! - [`identity`]: [`identity::Caller`], who is calling, as WhoIs says.
//! - [`tailnet`]: embedded tsnet nodes over FFI; the only module allowed
//!   unchecked (FFI) code.
//! - [`config`]: `endpoints.toml`: parse, validate with file:line:col and
//!   field paths, fingerprint.
//! - [`policy`]: `decide(policy, caller, action)`; pure, deny by default.
//! - [`inspect`]: secret and prompt-injection detectors, redaction.
//! - [`audit`]: records, hash chain, SQLite/PostgreSQL store, verify, export.
//! - [`backend`]: targets pinned once per configuration, connect with timeout;
//!   [`backend::headers`], the one list of caller headers that never reach a
//!   backend and the connector's own forwarding and identity headers.
//!
//! Pieces that wire them together:
//!
//! - [`review`]: the security-review report and diff of an endpoint file.
//! - [`mcp`]: the governed MCP endpoint (rmcp over hyper): built-in tools,
//!   `http_request`, federation of upstream MCP servers, per-caller
//!   filtering, inspection, rate limits and audit of every call.
//! - [`devices`]: one virtual device per endpoint: accept, identify,
//!   authorize, proxy.
//! - `main.rs`: the CLI; one function per subcommand.
//!
//! # Data flow, top to bottom
//!
//! ```text
//! tailnet accept (fd + peer address, one message)
//!   -> identify   Node::whois(peer) on the accepting node -> Caller
//!   -> authorize  policy::decide(&Policy, &Caller, &Action) -> permit | deny(reason)
//!   -> inspect    arguments (secrets / injection) -> pass | redact | block
//!   -> backend    TCP splice, HTTP request, or upstream MCP call (target only from the file)
//!   -> inspect    results
//!   -> audit      one record per connection / call, always, also on deny and error
//! ```
//!
//! An [`audit::AuditGuard`] is created at accept and written when dropped, so
//! a denial, a timeout or a panic still leaves a record. It reserves its
//! record's place in the audit queue, and its `admit()` is the gate: while
//! records cannot be committed, new work is refused (`audit_unavailable`),
//! never served unrecorded.

#![deny(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod config;
pub mod devices;
pub mod identity;
pub mod inspect;
pub mod mcp;
pub mod metrics;
pub mod policy;
pub mod review;
pub mod tailnet;
