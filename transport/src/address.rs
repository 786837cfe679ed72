//! Addresses are URLs naming a wire and a place on it:
//!
//! | URL | backend | place |
//! |---|---|---|
//! | `shm://NAME` | `shm` (shared memory on this host) | a name of letters, digits, `.`, `_`, `-` |
//! | `nng+ipc:///PATH[?native]` | `nng` | an absolute path of a Unix socket |
//! | `nng+tcp://HOST:PORT[?native]` | `nng` | a host name, IPv4 literal or `[IPv6]` literal, and a port |
//! | `quic://HOST:PORT?pin=HEX` | `quic` | host and port; `pin` is the SHA-256 of the server's certificate, 64 hex digits (required to connect, not to listen) |
//! | `inproc://NAME` | in-process (always built) | a name, as for `shm://`, within one process |
//!
//! `?native` on an nng address speaks nng's own protocols (PUB/SUB,
//! PUSH/PULL, REQ/REP with plain message bodies) so that nng peers shoal
//! did not write (pynng, nngcat, C programs) can be the other end, with
//! nng's semantics instead of shoal's: see the `nng` module (feature `nng`) for what that
//! gives up.
//!
//! Parsing checks the syntax only; [`Address::check_available`] says
//! whether this build has the backend the address needs, with an error
//! naming the Cargo feature that brings it.

use crate::error::{Error, Result};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

/// Longest `shm://` name (the segment name adds a prefix; `NAME_MAX` is 255).
pub const MAX_SHM_NAME: usize = 200;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_IPC_PATH: usize = 107;

/// The wires this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Shared memory on one host (shoal-shm-ring).
    Shm,
    /// nng sockets (ipc and tcp).
    Nng,
    /// QUIC (quinn, TLS 1.3 with a pinned certificate).
    Quic,
    /// Within one process (tokio channels): the reference the conformance
    /// suite runs beside the real wires.
    InProc,
}

impl Backend {
    /// The Cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            Backend::Shm => "shm",
            Backend::Nng => "nng",
            Backend::Quic => "quic",
            Backend::InProc => "inproc",
        }
    }

    /// Whether this build has the backend.
    pub fn available(self) -> bool {
        match self {
            Backend::Shm => cfg!(feature = "shm"),
            Backend::InProc => true,
            Backend::Nng => cfg!(feature = "nng"),
            Backend::Quic => cfg!(feature = "quic"),
        }
    }
}

/// A host: a name, or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name (letters, digits, `-`, dot-separated labels).
    Name(String),
    /// An IPv4 literal.
    V4(Ipv4Addr),
    /// An IPv6 literal (written in brackets in a URL).
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A parsed address.
///
/// ```
/// use shoal_transport::{Address, Backend};
/// let a: Address = "quic://[::1]:4433".parse()?;
/// assert_eq!(a.to_string(), "quic://[::1]:4433");
/// let b: Address = "nng+tcp://example.org:5555".parse()?;
/// assert_eq!(b.backend(), Backend::Nng);
/// assert!("tcp://example.org:5555".parse::<Address>().is_err());
/// # Ok::<(), shoal_transport::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `shm://NAME`.
    Shm {
        /// The name.
        name: String,
    },
    /// `inproc://NAME`.
    InProc {
        /// The name.
        name: String,
    },
    /// `nng+ipc:///PATH[?native]`.
    NngIpc {
        /// The socket path (absolute).
        path: PathBuf,
        /// `?native`: nng's own protocols, for foreign nng peers.
        native: bool,
    },
    /// `nng+tcp://HOST:PORT[?native]`.
    NngTcp {
        /// The host.
        host: Host,
        /// The port (0 when listening: any free port).
        port: u16,
        /// `?native`: nng's own protocols, for foreign nng peers.
        native: bool,
    },
    /// `quic://HOST:PORT[?pin=HEX]`.
    Quic {
        /// The host.
        host: Host,
        /// The port (0 when listening: any free port).
        port: u16,
        /// SHA-256 of the server certificate's DER bytes.
        pin: Option<[u8; 32]>,
    },
}

impl Address {
    /// The backend this address needs.
    pub fn backend(&self) -> Backend {
        match self {
            Address::Shm { .. } => Backend::Shm,
            Address::InProc { .. } => Backend::InProc,
            Address::NngIpc { .. } | Address::NngTcp { .. } => Backend::Nng,
            Address::Quic { .. } => Backend::Quic,
        }
    }

    /// Whether this is an nng address with `?native`: nng's own
    /// protocols on the wire, so foreign nng peers can be the other end.
    pub fn is_native(&self) -> bool {
        matches!(
            self,
            Address::NngIpc { native: true, .. } | Address::NngTcp { native: true, .. }
        )
    }

    /// `Ok` if this build has the backend the address needs, else
    /// [`Error::BackendMissing`] naming the feature to enable.
    pub fn check_available(&self) -> Result<()> {
        let b = self.backend();
        if b.available() {
            Ok(())
        } else {
            Err(Error::BackendMissing {
                address: self.to_string(),
                feature: b.feature(),
            })
        }
    }
}

fn bad(address: &str, why: impl Into<String>) -> Error {
    Error::BadAddress {
        address: address.to_string(),
        why: why.into(),
    }
}

/// `HOST:PORT` with an optional `[v6]` host.
fn host_port(address: &str, s: &str) -> Result<(Host, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(address, "an IPv6 literal needs its closing ']'"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad(address, "a port must follow the host (HOST:PORT)"))?;
        let ip: Ipv6Addr = v6
            .parse()
            .map_err(|_| bad(address, format!("{v6:?} is not an IPv6 address")))?;
        (Host::V6(ip), port)
    } else {
        let (h, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad(address, "a port must follow the host (HOST:PORT)"))?;
        if h.contains(':') {
            return Err(bad(
                address,
                "an IPv6 literal must be in brackets: [::1]:PORT",
            ));
        }
        let host = match h.parse::<Ipv4Addr>() {
            Ok(ip) => Host::V4(ip),
            Err(_) => Host::Name(host_name(address, h)?),
        };
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(address, format!("port {port:?} is not a number")));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad(address, format!("port {port} is above 65535")))?;
    Ok((host, port))
}

/// A DNS name: labels of letters, digits and `-` (not at either end),
/// 1-63 bytes each, 253 in all.
fn host_name(address: &str, h: &str) -> Result<String> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.is_empty() || h.len() > 253 || !h.split('.').all(ok_label) {
        return Err(bad(
            address,
            format!("{h:?} is not a host name or IP address"),
        ));
    }
    // An all-digit dotted name that failed to parse as IPv4 (300.1.1.1)
    // is a typo, not a name.
    if h.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad(address, format!("{h:?} is not an IPv4 address")));
    }
    Ok(h.to_ascii_lowercase())
}

fn parse_pin(address: &str, hex: &str) -> Result<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return Err(bad(
            address,
            format!("pin must be 64 hex digits (SHA-256), found {}", b.len()),
        ));
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        match (nib(pair[0]), nib(pair[1])) {
            (Some(h), Some(l)) => out[i] = h << 4 | l,
            _ => return Err(bad(address, "pin must be hex digits only")),
        }
    }
    Ok(out)
}

/// An nng address's place and whether it ends in `?native` (the only
/// query an nng address takes; a socket path cannot hold a `?`).
fn nng_query<'a>(address: &str, rest: &'a str) -> Result<(&'a str, bool)> {
    match rest.split_once('?') {
        None => Ok((rest, false)),
        Some((place, "native")) => Ok((place, true)),
        Some((_, q)) => Err(bad(
            address,
            format!("unknown query part {q:?} (nng takes only ?native)"),
        )),
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| bad(s, "expected SCHEME://..."))?;
        match scheme {
            "shm" | "inproc" => {
                if rest.is_empty() || rest.len() > MAX_SHM_NAME {
                    return Err(bad(
                        s,
                        format!("a shm name has 1 to {MAX_SHM_NAME} characters"),
                    ));
                }
                if !rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                    || rest.starts_with('.')
                {
                    return Err(bad(
                        s,
                        "a shm name has letters, digits, '.', '_' and '-' only, and does not start with '.'",
                    ));
                }
                let name = rest.to_string();
                Ok(if scheme == "shm" {
                    Address::Shm { name }
                } else {
                    Address::InProc { name }
                })
            }
            "nng+ipc" => {
                let (rest, native) = nng_query(s, rest)?;
                if !rest.starts_with('/') {
                    return Err(bad(s, "nng+ipc takes an absolute path: nng+ipc:///PATH"));
                }
                if rest.len() > MAX_IPC_PATH || rest.contains('\0') {
                    return Err(bad(
                        s,
                        format!("a socket path has at most {MAX_IPC_PATH} bytes and no NUL"),
                    ));
                }
                Ok(Address::NngIpc {
                    path: PathBuf::from(rest),
                    native,
                })
            }
            "nng+tcp" => {
                let (rest, native) = nng_query(s, rest)?;
                if rest.contains(['/', '?', '#']) {
                    return Err(bad(s, "nng+tcp takes HOST:PORT[?native] only"));
                }
                let (host, port) = host_port(s, rest)?;
                Ok(Address::NngTcp { host, port, native })
            }
            "quic" => {
                let (hp, query) = match rest.split_once('?') {
                    Some((hp, q)) => (hp, Some(q)),
                    None => (rest, None),
                };
                if hp.contains(['/', '#']) {
                    return Err(bad(s, "quic takes HOST:PORT[?pin=HEX] only"));
                }
                let (host, port) = host_port(s, hp)?;
                let mut pin = None;
                if let Some(q) = query {
                    for kv in q.split('&') {
                        match kv.split_once('=') {
                            Some(("pin", v)) if pin.is_none() => pin = Some(parse_pin(s, v)?),
                            Some(("pin", _)) => return Err(bad(s, "pin given twice")),
                            _ => {
                                return Err(bad(
                                    s,
                                    format!("unknown query part {kv:?} (only pin=HEX)"),
                                ))
                            }
                        }
                    }
                }
                Ok(Address::Quic { host, port, pin })
            }
            other => Err(bad(
                s,
                format!("unknown scheme {other:?} (shm, nng+ipc, nng+tcp, quic, inproc)"),
            )),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Shm { name } => write!(f, "shm://{name}"),
            Address::InProc { name } => write!(f, "inproc://{name}"),
            Address::NngIpc { path, native } => {
                write!(f, "nng+ipc://{}", path.display())?;
                if *native {
                    f.write_str("?native")?;
                }
                Ok(())
            }
            Address::NngTcp { host, port, native } => {
                write!(f, "nng+tcp://{host}:{port}")?;
                if *native {
                    f.write_str("?native")?;
                }
                Ok(())
            }
            Address::Quic { host, port, pin } => {
                write!(f, "quic://{host}:{port}")?;
                if let Some(p) = pin {
                    f.write_str("?pin=")?;
                    for b in p {
                        write!(f, "{b:02x}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Address {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match s.parse::<Address>() {
            Ok(a) => panic!("{s} parsed as {a:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_scheme_parses_and_prints_back() {
        let pin = "ab".repeat(32);
        for s in [
            "shm://ring-1.a_b".to_string(),
            "nng+ipc:///tmp/shoal.sock".to_string(),
            "nng+tcp://127.0.0.1:5555".to_string(),
            "nng+tcp://[::1]:0".to_string(),
            "nng+tcp://node-7.example.org:65535".to_string(),
            "nng+tcp://127.0.0.1:5555?native".to_string(),
            "nng+ipc:///tmp/shoal.sock?native".to_string(),
            "quic://[fe80::1]:4433".to_string(),
            format!("quic://10.0.0.2:4433?pin={pin}"),
        ] {
            assert_eq!(ok(&s).to_string(), s);
        }
        assert_eq!(
            ok("nng+tcp://Example.ORG:1").to_string(),
            "nng+tcp://example.org:1"
        );
        let a = ok(&format!("quic://h:1?pin={}", "0F".repeat(32)));
        assert_eq!(
            a,
            Address::Quic {
                host: Host::Name("h".into()),
                port: 1,
                pin: Some([0x0f; 32])
            }
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        assert!(err("shm:/x").contains("SCHEME://"));
        assert!(err("tcp://a:1").contains("unknown scheme"));
        assert!(err("shm://").contains("1 to"));
        assert!(err("shm://a/b").contains("letters, digits"));
        assert!(err("shm://..").contains("does not start with"));
        assert!(err("nng+ipc://rel/path").contains("absolute"));
        assert!(err(&format!("nng+ipc:///{}", "x".repeat(200))).contains("at most"));
        assert!(err("nng+tcp://host").contains("port must follow"));
        assert!(err("nng+tcp://host:").contains("not a number"));
        assert!(err("nng+tcp://host:70000").contains("above 65535"));
        assert!(err("nng+tcp://::1:5").contains("brackets"));
        assert!(err("nng+tcp://[::g]:5").contains("not an IPv6"));
        assert!(err("nng+tcp://[::1]5").contains("port must follow"));
        assert!(err("nng+tcp://300.1.1.1:5").contains("not an IPv4"));
        assert!(err("nng+tcp://-bad.org:5").contains("not a host name"));
        assert!(err("nng+tcp://a..b:5").contains("not a host name"));
        assert!(err("nng+tcp://a:5/path").contains("HOST:PORT[?native] only"));
        assert!(err("nng+tcp://a:5?raw").contains("only ?native"));
        assert!(err("nng+ipc:///a?b").contains("only ?native"));
        assert!(ok("nng+ipc:///a?native").is_native());
        assert!(!ok("nng+ipc:///a").is_native());
        assert!(err("quic://a:5?pin=abc").contains("64 hex digits"));
        assert!(err(&format!("quic://a:5?pin={}", "zz".repeat(32))).contains("hex digits only"));
        assert!(err("quic://a:5?cert=x").contains("unknown query part"));
        let pin = "00".repeat(32);
        assert!(err(&format!("quic://a:5?pin={pin}&pin={pin}")).contains("twice"));
    }

    #[test]
    fn a_missing_backend_names_its_feature() {
        let quic = ok("quic://[::1]:1").check_available();
        if cfg!(feature = "quic") {
            assert!(quic.is_ok());
        } else {
            let e = quic.unwrap_err().to_string();
            assert!(e.contains("`quic` feature"), "{e}");
        }
        let nng = ok("nng+ipc:///x").check_available();
        if cfg!(feature = "nng") {
            assert!(nng.is_ok());
        } else {
            let e = nng.unwrap_err().to_string();
            assert!(e.contains("`nng` feature"), "{e}");
        }
    }

    proptest::proptest! {
        /// Any string: an address or an error, never a panic; what parses
        /// prints back to something that parses to the same address.
        #[test]
        fn parsing_never_panics_and_round_trips(s in ".{0,80}") {
            if let Ok(a) = s.parse::<Address>() {
                proptest::prop_assert_eq!(a.to_string().parse::<Address>().ok(), Some(a));
            }
        }

        #[test]
        fn url_shaped_strings_round_trip(
            scheme in proptest::sample::select(vec!["shm", "nng+ipc", "nng+tcp", "quic", "inproc"]),
            rest in "[a-z0-9:/\\[\\]._?=-]{0,40}",
        ) {
            let s = format!("{scheme}://{rest}");
            if let Ok(a) = s.parse::<Address>() {
                proptest::prop_assert_eq!(a.to_string().parse::<Address>().ok(), Some(a));
            }
        }
    }
}
