//! Handles: what another process needs to attach to a channel, as text
//! (for environment variables, command lines, files) and as rkyv bytes
//! (to send over a channel), with the format of the build that made it so
//! incompatible builds refuse each other by name.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The version of the channel protocols; part of [`format`].
const PROTOCOL: u32 = 2;

/// This build's channel format: the channel protocol version, the ring
/// layout's ABI fingerprint and the rkyv format. Two builds share a
/// channel only when their formats are equal.
///
/// ```
/// let f = shoal_channel::handle::format();
/// assert!(f.starts_with("ch2.ring-"));
/// assert!(!f.contains(' '));
/// ```
pub fn format() -> &'static str {
    static FORMAT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FORMAT.get_or_init(|| {
        format!(
            "ch{PROTOCOL}.ring-{:016x}.{}",
            shoal_shm_ring::ABI_FINGERPRINT,
            shoal_transport::frame::archive_format().replace(' ', "-")
        )
    })
}

/// The payload-format tag of a channel's rings (what the ring header
/// carries, at most 32 bytes): the channel kind and the rkyv format.
pub(crate) fn ring_tag(kind: Kind) -> String {
    format!(
        "shoal-{}{PROTOCOL} {}",
        kind.short(),
        shoal_transport::frame::archive_format()
    )
}

/// The kinds of channel a handle can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Kind {
    /// A [`WorkQueue`](crate::WorkQueue).
    WorkQueue,
    /// A [`Gather`](crate::Gather).
    Gather,
    /// A [`Broadcast`](crate::Broadcast).
    Broadcast,
    /// An [`Rpc`](crate::Rpc): a broadcast of requests and a gather of
    /// replies.
    Rpc,
}

impl Kind {
    /// Its name in a handle's text.
    pub fn name(self) -> &'static str {
        match self {
            Kind::WorkQueue => "workqueue",
            Kind::Gather => "gather",
            Kind::Broadcast => "broadcast",
            Kind::Rpc => "rpc",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Kind::WorkQueue => "wq",
            Kind::Gather => "ga",
            Kind::Broadcast => "bc",
            Kind::Rpc => "rp",
        }
    }
}

/// What another process needs to attach to a channel: its kind, where its
/// shared memory is, and the format of the build that made it.
///
/// Text form: `KIND@LOCATION?fmt=FORMAT&host=HEX[&remote=URL]`, for
/// example `workqueue@shm://shoal-mq-3f2a…?fmt=ch2.ring-…&host=…`; a
/// channel that takes peers on other hosts adds where they connect
/// (`&remote=quic://10.0.0.1:4433?pin=…`).
///
/// ```
/// use shoal_channel::{Handle, QueueOptions, WorkQueue};
/// let q = WorkQueue::create(&QueueOptions::default())?;
/// let text = q.handle().to_string();
/// let back: Handle = text.parse()?;
/// assert_eq!(&back, q.handle());
/// let bytes = back.to_bytes()?;
/// assert_eq!(Handle::from_bytes(&bytes)?, back);
/// # Ok::<(), shoal_channel::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Handle {
    kind: Kind,
    /// The ring's handle text (`shm://NAME`).
    local: String,
    /// The format of the build that made the channel (see [`format`]).
    format: String,
    /// The host of the process that made it (see
    /// [`host_id`](crate::gather::host_id)): readers elsewhere use
    /// `remote`.
    host: u64,
    /// Where peers on other hosts connect (a network address), if the
    /// channel takes any.
    remote: Option<String>,
}

impl Handle {
    pub(crate) fn new(kind: Kind, local: String) -> Handle {
        Handle {
            kind,
            local,
            format: format().to_string(),
            host: crate::gather::host_id(),
            remote: None,
        }
    }

    /// The handle, with `remote` where peers on other hosts connect.
    pub(crate) fn with_remote(mut self, remote: String) -> Handle {
        self.remote = Some(remote);
        self
    }

    /// Where peers on other hosts connect, if the channel takes any.
    pub fn remote(&self) -> Option<&str> {
        self.remote.as_deref()
    }

    /// Whether the channel was made on another host than this one (then
    /// its shared memory is not reachable here: peers use
    /// [`remote`](Self::remote)).
    pub fn is_elsewhere(&self) -> bool {
        self.host != crate::gather::host_id()
    }

    /// The kind of channel it names.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// An Rpc's handle: its requests' broadcast and its replies' gather
    /// (their own handles, each `shm://NAME`).
    /// With workers on other hosts, its remote address is both parts'
    /// (joined by a comma).
    pub(crate) fn rpc(requests: &Handle, replies: &Handle) -> Handle {
        let h = Handle::new(
            Kind::Rpc,
            format!("{}{RPC_JOIN}{}", requests.local, replies.local),
        );
        match (&requests.remote, &replies.remote) {
            (Some(a), Some(b)) => h.with_remote(format!("{a}{REMOTE_JOIN}{b}")),
            _ => h,
        }
    }

    /// The two handles an Rpc's handle joins: its requests' broadcast and
    /// its replies' gather.
    pub(crate) fn rpc_parts(&self) -> Result<(Handle, Handle)> {
        self.check(Kind::Rpc)?;
        let (req, rep) = self.local.split_once(RPC_JOIN).ok_or_else(|| {
            Error::BadHandle(format!(
                "an rpc handle without its two rings: {}",
                self.local
            ))
        })?;
        let (req_at, rep_at) = match &self.remote {
            None => (None, None),
            // The replies' address is the last (the requests' carries
            // its readers' door after its own comma).
            Some(r) => match r.rsplit_once(REMOTE_JOIN) {
                Some((a, b)) if !a.is_empty() && !b.is_empty() => {
                    (Some(a.to_string()), Some(b.to_string()))
                }
                _ => {
                    return Err(Error::BadHandle(format!(
                        "an rpc handle whose remote address is not two: {r}"
                    )))
                }
            },
        };
        let part = |kind, local: &str, remote| Handle {
            kind,
            local: local.to_string(),
            format: self.format.clone(),
            host: self.host,
            remote,
        };
        Ok((
            part(Kind::Broadcast, req, req_at),
            part(Kind::Gather, rep, rep_at),
        ))
    }

    /// Checks that it names a `kind` made by a build this one can talk to.
    fn check(&self, kind: Kind) -> Result<()> {
        if self.format != format() {
            return Err(Error::Incompatible {
                ours: format().to_string(),
                theirs: self.format.clone(),
            });
        }
        if self.kind != kind {
            return Err(Error::WrongKind {
                expected: kind.name(),
                found: self.kind.name(),
            });
        }
        Ok(())
    }

    /// The ring it names, after checking that it is a `kind` made by a
    /// build this one can talk to.
    pub(crate) fn ring(&self, kind: Kind) -> Result<shoal_shm_ring::Handle> {
        self.check(kind)?;
        self.local
            .parse()
            .map_err(|e| Error::BadHandle(format!("ring handle {:?}: {e}", self.local)))
    }

    /// The handle as bytes: [`MAGIC`], the format's length (u16, little
    /// endian) and the format in plain bytes, then the handle as an rkyv
    /// archive. The format comes first and plain, so a build whose rkyv
    /// format (or handle layout) differs is told so by name.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map_err(|e| Error::BadHandle(format!("serializing: {e}")))?;
        let f = self.format.as_bytes();
        let len = u16::try_from(f.len())
            .map_err(|_| Error::BadHandle("format longer than 64 KiB".into()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + 2 + f.len() + archive.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(f);
        out.extend_from_slice(&archive);
        Ok(out)
    }

    /// Reads a handle from [`to_bytes`](Self::to_bytes)'s bytes (any
    /// alignment; the archive is validated).
    pub fn from_bytes(bytes: &[u8]) -> Result<Handle> {
        let bad = |why: &str| Error::BadHandle(format!("not a channel handle: {why}"));
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| bad("no magic"))?;
        let (len, rest) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| bad("truncated"))?;
        let len = usize::from(u16::from_le_bytes(*len));
        if rest.len() < len {
            return Err(bad("truncated format"));
        }
        let (theirs, archive) = rest.split_at(len);
        if theirs != format().as_bytes() {
            return Err(Error::Incompatible {
                ours: format().to_string(),
                theirs: String::from_utf8_lossy(theirs).into_owned(),
            });
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(archive.len());
        aligned.extend_from_slice(archive);
        let h = rkyv::from_bytes::<Handle, rkyv::rancor::Error>(&aligned)
            .map_err(|e| bad(&e.to_string()))?;
        if h.format.as_bytes() != theirs {
            return Err(bad("its two formats differ"));
        }
        if h.remote.as_deref().is_some_and(str::is_empty) {
            return Err(bad("an empty remote address"));
        }
        Ok(h)
    }
}

/// What joins the two rings' locations in an Rpc's handle.
const RPC_JOIN: &str = "+";
/// What joins the two remote addresses in an Rpc's handle (no network
/// address has a comma).
const REMOTE_JOIN: char = ',';

/// The first bytes of a handle's binary form.
pub const MAGIC: &[u8; 8] = b"SHOALCH\x01";

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}?fmt={}&host={:016x}",
            self.kind.name(),
            self.local,
            self.format,
            self.host
        )?;
        match &self.remote {
            Some(r) => write!(f, "&remote={r}"),
            None => Ok(()),
        }
    }
}

impl FromStr for Handle {
    type Err = Error;
    fn from_str(s: &str) -> Result<Handle> {
        let bad = |why: &str| Error::BadHandle(format!("{s:?}: {why}"));
        let (kind, rest) = s
            .trim()
            .split_once('@')
            .ok_or_else(|| bad("expected KIND@LOCATION?fmt=FORMAT&host=HEX"))?;
        let (local, params) = rest
            .split_once("?fmt=")
            .ok_or_else(|| bad("no ?fmt= (the format of the build that made it)"))?;
        // After the format: `&host=HEX`, then `&remote=URL` (last: a URL
        // may hold anything).
        let (params, remote) = match params.split_once("&remote=") {
            Some((p, r)) if !r.is_empty() => (p, Some(r.to_string())),
            Some(_) => return Err(bad("an empty &remote=")),
            None => (params, None),
        };
        let (format, host) = match params.split_once("&host=") {
            Some((f, h)) => (f, Some(h)),
            None => (params, None),
        };
        let other_build = || Error::Incompatible {
            ours: self::format().to_string(),
            theirs: format.to_string(),
        };
        let kind = match kind {
            "workqueue" => Kind::WorkQueue,
            "gather" => Kind::Gather,
            "broadcast" => Kind::Broadcast,
            "rpc" => Kind::Rpc,
            // A kind this build does not know: from another build?
            _ if format != self::format() => return Err(other_build()),
            _ => return Err(bad("unknown channel kind")),
        };
        let ring_ok = |l: &str| l.starts_with("shm://") && l.len() > "shm://".len();
        let located = match kind {
            Kind::Rpc => local
                .split_once(RPC_JOIN)
                .is_some_and(|(a, b)| ring_ok(a) && ring_ok(b)),
            _ => ring_ok(local),
        };
        if !located {
            return Err(bad(
                "the location must be shm://NAME (an rpc's: shm://NAME+shm://NAME)",
            ));
        }
        if format.is_empty() || format.contains(char::is_whitespace) {
            return Err(bad("empty or malformed format"));
        }
        let Some(host) = host else {
            // Another build's handle (before hosts were named), or a
            // broken one.
            if format != self::format() {
                return Err(other_build());
            }
            return Err(bad("no &host= (the host that made it)"));
        };
        let host = match u64::from_str_radix(host, 16) {
            Ok(h) => h,
            // Another build may put more after its host.
            Err(_) if format != self::format() => return Err(other_build()),
            Err(_) => return Err(bad("a host that is not hex")),
        };
        Ok(Handle {
            kind,
            local: local.to_string(),
            format: format.to_string(),
            host,
            remote,
        })
    }
}
