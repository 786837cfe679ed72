//! [`Reply`]: where [`Replier::serve_one_into`](crate::Replier::serve_one_into)
//! has an answer written, straight into the memory the wire sends it from
//! (an nng message, a QUIC stream's buffer), so the answer is copied once,
//! by whoever writes it, instead of once into a `Vec` and again into the
//! wire's memory.

/// An answer being written. It grows as bytes are added; what was added
/// is the reply's payload.
///
/// ```
/// use shoal_transport::Reply;
///
/// let mut buf = Vec::new();
/// let mut out = Reply::new(&mut buf);
/// out.extend_from_slice(b"hello, ");
/// std::io::Write::write_all(&mut out, b"world").unwrap();
/// assert_eq!(out.len(), 12);
/// assert_eq!(buf, b"hello, world");
/// ```
pub struct Reply<'a> {
    out: Out<'a>,
    /// Where the payload starts in the memory written to (what lies
    /// before is the wire's header).
    start: usize,
}

/// The memory a reply is written to.
enum Out<'a> {
    Vec(&'a mut Vec<u8>),
    /// An nng message and the body capacity it was allocated with (nng
    /// 1.4 grows a message to exactly the length asked for, copying it
    /// each time, so the reply grows it by doubling instead).
    #[cfg(feature = "nng")]
    Nng(&'a mut ::nng::Message, usize),
}

impl std::fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply").field("len", &self.len()).finish()
    }
}

impl<'a> Reply<'a> {
    /// A reply written to the end of `buf` (what `buf` already holds is
    /// not part of it).
    pub fn new(buf: &'a mut Vec<u8>) -> Reply<'a> {
        let start = buf.len();
        Reply {
            out: Out::Vec(buf),
            start,
        }
    }

    /// A reply written to the end of the nng message `msg`, allocated
    /// with a body capacity of `cap` bytes.
    #[cfg(feature = "nng")]
    pub(crate) fn nng(msg: &'a mut ::nng::Message, cap: usize) -> Reply<'a> {
        let start = msg.len();
        Reply {
            out: Out::Nng(msg, cap),
            start,
        }
    }

    /// Makes room for at least `additional` more bytes (a reply of known
    /// length is then written without growing its memory again). Growth
    /// is amortised as `Vec`'s is: reserving piece by piece does not copy
    /// the reply again each time.
    pub fn reserve(&mut self, additional: usize) {
        match &mut self.out {
            Out::Vec(v) => v.reserve(additional),
            #[cfg(feature = "nng")]
            Out::Nng(m, cap) => {
                let want = m.len().saturating_add(additional);
                if want > *cap {
                    // Doubled at least, and room for the wire's padding
                    // after the payload (up to 15 bytes), so that adding
                    // it does not copy the whole reply once more.
                    let grown_cap = want.max(cap.saturating_mul(2)).saturating_add(15);
                    let mut grown = ::nng::Message::with_capacity(grown_cap);
                    grown.push_back(m.as_slice());
                    **m = grown;
                    *cap = grown_cap;
                }
            }
        }
    }

    /// Adds `bytes` to the reply.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        match &mut self.out {
            Out::Vec(v) => v.extend_from_slice(bytes),
            #[cfg(feature = "nng")]
            Out::Nng(m, _) => m.push_back(bytes),
        }
    }

    /// The length of the memory written to, header included.
    fn total(&self) -> usize {
        match &self.out {
            Out::Vec(v) => v.len(),
            #[cfg(feature = "nng")]
            Out::Nng(m, _) => m.len(),
        }
    }

    /// The reply's length so far.
    pub fn len(&self) -> usize {
        self.total() - self.start
    }

    /// Whether nothing was added yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::io::Write for Reply<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
