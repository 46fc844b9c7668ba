//! The only unsafe code in Portcullis: calls into the tsffi C archive.
//!
//! Every function here is a thin, safe wrapper over one C call. Each takes
//! Rust types, converts strings to C (rejecting interior NULs), passes an
//! error out-parameter, and turns a malloc'd message into a `String`. They
//! all may block; callers run them off the async workers.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

#[allow(non_camel_case_types, non_upper_case_globals, dead_code, clippy::all)]
mod raw {
    include!(concat!(env!("OUT_DIR"), "/tsffi_bindings.rs"));
}

/// A failed call: the Go error text, or why the call could not be made.
pub(super) type CallResult<T> = Result<T, String>;

/// Converts an argument, naming it in the error when it holds a NUL byte.
fn cstring(what: &str, value: &str) -> CallResult<CString> {
    CString::new(value).map_err(|_| format!("{what} contains a NUL byte"))
}

/// Takes ownership of a string returned by tsffi and frees it.
fn take_string(ptr: *mut c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: tsffi returns NUL-terminated strings allocated with malloc
    // (C.CString); we copy it out before freeing it exactly once.
    let text = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `ptr` came from tsffi, is non-null and is freed only here.
    unsafe { raw::tsffi_free(ptr) };
    text
}

/// Runs a tsffi call that follows the `0 / -1 + *err` convention.
fn check(call: impl FnOnce(*mut *mut c_char) -> c_int) -> CallResult<()> {
    let mut err: *mut c_char = std::ptr::null_mut();
    let rc = call(&mut err);
    if rc == 0 {
        take_string(err); // never set on success; free defensively
        Ok(())
    } else {
        let message = take_string(err);
        Err(if message.is_empty() {
            format!("tsffi call failed ({rc})")
        } else {
            message
        })
    }
}

pub(super) fn setenv(key: &str, value: &str) -> CallResult<()> {
    let key = cstring("knob name", key)?;
    let value = cstring("knob value", value)?;
    // SAFETY: both pointers are valid NUL-terminated strings for the call.
    check(|err| unsafe {
        raw::tsffi_setenv(key.as_ptr().cast_mut(), value.as_ptr().cast_mut(), err)
    })
}

pub(super) fn version() -> String {
    // SAFETY: no arguments; returns a malloc'd string we take.
    take_string(unsafe { raw::tsffi_version() })
}

pub(super) fn stacks() -> String {
    // SAFETY: no arguments; returns a malloc'd string we take.
    take_string(unsafe { raw::tsffi_stacks() })
}

pub(super) fn set_gc(gc_percent: c_int, memory_limit: i64) -> CallResult<()> {
    // SAFETY: plain integers and a valid error out-pointer.
    check(|err| unsafe { raw::tsffi_set_gc(gc_percent, memory_limit, err) })
}

pub(super) fn memstats() -> String {
    // SAFETY: no arguments; returns a malloc'd string we take.
    take_string(unsafe { raw::tsffi_memstats() })
}

pub(super) fn new_node() -> c_int {
    // SAFETY: no arguments; returns a fresh handle.
    unsafe { raw::tsffi_new() }
}

/// Which string setting of a node to change.
#[derive(Clone, Copy)]
pub(super) enum Setting {
    Dir,
    Hostname,
    AuthKey,
    ControlUrl,
    Tags,
}

pub(super) fn set(sd: c_int, setting: Setting, value: &str) -> CallResult<()> {
    let name = match setting {
        Setting::Dir => "state dir",
        Setting::Hostname => "hostname",
        Setting::AuthKey => "auth key",
        Setting::ControlUrl => "control URL",
        Setting::Tags => "tags",
    };
    let value = cstring(name, value)?;
    let f = match setting {
        Setting::Dir => raw::tsffi_set_dir,
        Setting::Hostname => raw::tsffi_set_hostname,
        Setting::AuthKey => raw::tsffi_set_authkey,
        Setting::ControlUrl => raw::tsffi_set_control_url,
        Setting::Tags => raw::tsffi_set_tags,
    };
    // SAFETY: `value` is a valid NUL-terminated string; tsffi copies it.
    check(|err| unsafe { f(sd, value.as_ptr().cast_mut(), err) })
}

pub(super) fn set_ephemeral(sd: c_int, ephemeral: bool) -> CallResult<()> {
    // SAFETY: plain integers and a valid error out-pointer.
    check(|err| unsafe { raw::tsffi_set_ephemeral(sd, c_int::from(ephemeral), err) })
}

/// Hands `fd` to the node for its logs; tsffi owns and closes it.
pub(super) fn set_log_fd(sd: c_int, fd: Option<OwnedFd>) -> CallResult<()> {
    let raw_fd = fd.map_or(-1, IntoRawFd::into_raw_fd);
    // SAFETY: ownership of `raw_fd` passes to tsffi (it wraps it in an
    // os.File and closes it when the node closes).
    check(|err| unsafe { raw::tsffi_set_logfd(sd, raw_fd, err) })
}

pub(super) fn up(sd: c_int, timeout_ms: c_int) -> CallResult<()> {
    // SAFETY: plain integers and a valid error out-pointer.
    check(|err| unsafe { raw::tsffi_up(sd, timeout_ms, err) })
}

pub(super) fn close(sd: c_int) -> CallResult<()> {
    // SAFETY: plain integer and a valid error out-pointer; an unknown
    // handle is an error, not undefined behaviour.
    check(|err| unsafe { raw::tsffi_close(sd, err) })
}

pub(super) fn get_ips(sd: c_int) -> CallResult<String> {
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: `out` is a valid out-pointer; on success it holds a malloc'd
    // string that take_string frees.
    check(|err| unsafe { raw::tsffi_getips(sd, &mut out, err) })?;
    Ok(take_string(out))
}

pub(super) fn listen(sd: c_int, network: &str, addr: &str) -> CallResult<OwnedFd> {
    let network = cstring("network", network)?;
    let addr = cstring("listen address", addr)?;
    let mut fd: c_int = -1;
    // SAFETY: valid strings and out-pointers for the duration of the call.
    check(|err| unsafe {
        raw::tsffi_listen(
            sd,
            network.as_ptr().cast_mut(),
            addr.as_ptr().cast_mut(),
            &mut fd,
            err,
        )
    })?;
    owned(fd)
}

pub(super) fn dial(sd: c_int, network: &str, addr: &str, timeout_ms: c_int) -> CallResult<OwnedFd> {
    let network = cstring("network", network)?;
    let addr = cstring("dial address", addr)?;
    let mut fd: c_int = -1;
    // SAFETY: valid strings and out-pointers for the duration of the call.
    check(|err| unsafe {
        raw::tsffi_dial(
            sd,
            network.as_ptr().cast_mut(),
            addr.as_ptr().cast_mut(),
            timeout_ms,
            &mut fd,
            err,
        )
    })?;
    owned(fd)
}

pub(super) fn whois(sd: c_int, addr: &str) -> CallResult<String> {
    let addr = cstring("peer address", addr)?;
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: valid string and out-pointers; `out` is freed by take_string.
    check(|err| unsafe { raw::tsffi_whois(sd, addr.as_ptr().cast_mut(), &mut out, err) })?;
    Ok(take_string(out))
}

pub(super) fn peers(sd: c_int) -> CallResult<String> {
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: valid out-pointers; `out` is freed by take_string.
    check(|err| unsafe { raw::tsffi_peers(sd, &mut out, err) })?;
    Ok(take_string(out))
}

/// Wraps an fd that tsffi handed over to us.
fn owned(fd: c_int) -> CallResult<OwnedFd> {
    if fd < 0 {
        return Err("tsffi reported success without an fd".into());
    }
    // SAFETY: on success tsffi transfers a freshly created, open fd that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of an fd received over SCM_RIGHTS.
pub(super) fn owned_received(fd: c_int) -> OwnedFd {
    // SAFETY: the kernel installed this fd in our table for this message
    // only; nothing else refers to it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Registers a listener fd with the tokio reactor for readiness.
pub(super) fn register(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` is I/O-safe: it owns an open fd, always reports the
    // same one, and closes it only when the AsyncFd drops it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
