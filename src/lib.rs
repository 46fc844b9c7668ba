//! Portcullis: the only door between AI agents on a tailnet and a company's
//! private services.
//!
//! (Module map and data flow: filled in as the modules land.)

#![deny(unsafe_code)]

pub mod config;
pub mod identity;
pub mod policy;
pub mod review;
