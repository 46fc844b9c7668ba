// tsffi: a small C API over tailscale.com/tsnet for embedding tailnet nodes.
//
// String arguments are read, never modified or retained. (They are declared
// without const because the Go side includes this header, and cgo cannot
// express const; that inclusion makes the C compiler check this contract
// against the exported Go functions on every build.)
//
// The shape follows libtailscale (new, set_*, start, up, close, listen,
// accept, dial, getips) with these differences:
//
//  * Every call that can fail returns 0 on success or -1 on failure and, on
//    failure, stores a malloc'd NUL-terminated message in *err (free it with
//    tsffi_free). A per-handle "last error" (libtailscale's errmsg) is racy
//    when one node serves many connections concurrently; a per-call error is
//    not.
//  * A listener is one end of an AF_UNIX SOCK_SEQPACKET socketpair. Each
//    accepted tailnet connection arrives on it as ONE message whose payload is
//    the peer's tailnet address ("100.64.0.2:41234") and whose SCM_RIGHTS
//    control data carries the connection fd. Address and fd travel together,
//    so a connection can never be paired with another connection's address.
//    Every connection is taken from tsnet as it arrives and waits, without a
//    deadline, until the caller receives it. Closing the listener fd stops
//    the tailnet listener (connections still waiting are closed).
//  * A connection is one end of an AF_UNIX SOCK_STREAM socketpair; the other
//    end is spliced to the tailnet TCP connection in the node. shutdown(WR)
//    on it half-closes the tailnet connection.
//  * tsffi_up takes a timeout and is cancelled by tsffi_close.
//  * A node whose state dir already holds a login starts without sending
//    its auth key (a control server may spend real CPU verifying it); the
//    key is used only if the control server asks for a login again.
//  * tsffi_whois answers from the node's own LocalAPI, as WhoIs JSON.
//  * Logs go to the fd given with tsffi_set_logfd (or nowhere); log upload to
//    any log service is disabled for the whole process.
#ifndef TSFFI_H
#define TSFFI_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Process-wide: set a Tailscale environment knob (e.g. TS_DEBUG_USE_DERP_HTTP)
// so that the embedded Go runtime sees it. Call before creating nodes.
int tsffi_setenv(char *key, char *value, char **err);

// Process-wide: JSON {"tailscale":"v1.x.y","go":"go1.x.y"} describing what
// was compiled in. Free with tsffi_free.
char *tsffi_version(void);

// Process-wide: Go garbage collector settings for the embedded runtime.
// gc_percent: -1 turns the collector off (useful only with a memory
// limit), 0 leaves it unchanged, > 0 sets GOGC. memory_limit: 0 leaves it
// unchanged, > 0 sets GOMEMLIMIT in bytes. The limit counts every byte the
// Go heap has allocated, resident or not.
int tsffi_set_gc(int gc_percent, long long memory_limit, char **err);

// Process-wide: JSON figures of the embedded Go runtime (heap_alloc,
// heap_inuse, heap_sys, next_gc, stack_inuse, num_gc, goroutines,
// gc_percent, memory_limit). Free with tsffi_free.
char *tsffi_memstats(void);

// Free a string returned by this library.
void tsffi_free(char *p);

// Stack traces of every goroutine, for diagnosing a call that does not
// return. Free with tsffi_free.
char *tsffi_stacks(void);

// Create a node handle (> 0). Nothing runs until tsffi_start/tsffi_up.
int tsffi_new(void);

int tsffi_set_dir(int sd, char *dir, char **err);
int tsffi_set_hostname(int sd, char *hostname, char **err);
int tsffi_set_authkey(int sd, char *authkey, char **err);
int tsffi_set_control_url(int sd, char *url, char **err);
int tsffi_set_ephemeral(int sd, int ephemeral, char **err);
// Comma-separated ACL tags to advertise, e.g. "tag:portcullis,tag:db".
int tsffi_set_tags(int sd, char *tags, char **err);
// Log destination: an fd the library takes ownership of, or -1 to discard.
int tsffi_set_logfd(int sd, int fd, char **err);

// Start the node's backend without waiting for it to join the tailnet.
int tsffi_start(int sd, char **err);
// Start and wait until the node is Running on the tailnet, at most
// timeout_ms milliseconds. tsffi_close cancels a waiting call.
int tsffi_up(int sd, int timeout_ms, char **err);
// Stop the node, its listeners and its connections; release the handle.
int tsffi_close(int sd, char **err);

// The node's tailnet addresses, comma-separated, in *out (free it).
int tsffi_getips(int sd, char **out, char **err);

// Listen on the tailnet, e.g. network "tcp", addr ":80". *listener_fd is the
// caller's end of the SOCK_SEQPACKET pair described above.
int tsffi_listen(int sd, char *network, char *addr, int *listener_fd, char **err);

// Blocking accept on a listener fd from tsffi_listen, for C callers: stores
// the connection fd in *conn_fd and the peer address (NUL-terminated, at
// most addr_len bytes including NUL) in addr_out.
int tsffi_accept(int listener_fd, int *conn_fd, char *addr_out, size_t addr_len, char **err);

// Dial a tailnet address ("100.64.0.3:80" or "name:80"), waiting at most
// timeout_ms. *conn_fd is the caller's end of the connection socketpair.
int tsffi_dial(int sd, char *network, char *addr, int timeout_ms, int *conn_fd, char **err);

// WhoIs for a tailnet peer address ("ip:port" or "ip"), as JSON in *out:
// {"Node":{...},"UserProfile":{...},"CapMap":{...}}. Free it.
int tsffi_whois(int sd, char *addr, char **out, char **err);

// The peers this node sees, as a JSON array in *out (free it):
// [{"name","ips":[..],"tags":[..],"online","direct","relay","rx_bytes",
// "tx_bytes"}]. "direct" is the peer's UDP address when packets go
// straight to it; otherwise "relay" names the DERP region carrying them.
int tsffi_peers(int sd, char **out, char **err);

#ifdef __cplusplus
}
#endif

#endif // TSFFI_H
