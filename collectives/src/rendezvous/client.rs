//! A rank's connection to the rendezvous.

use super::wire::{read_frame, write_frame, Reply, Request, Secret, MAX_SECRET, VERSION};
use crate::error::{Error, Result};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Added to a request's own wait before its answer is given up on.
const SLACK: Duration = Duration::from_secs(30);

/// A connection to the rendezvous, said hello on.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    address: String,
    max_frame: usize,
    /// A call failed half-way: its answer may still come, and would be
    /// read as the next call's; the connection is not used again.
    broken: bool,
}

impl Client {
    /// Connects to `address` as `rank` of `size`, showing `secret`,
    /// trying again until `timeout` while nobody listens there yet (rank
    /// 0 may start last). A refusal (another group's rendezvous, another
    /// secret) ends it at once, with [`Error::Refused`]; a secret longer
    /// than [`MAX_SECRET`] is [`Error::BadArguments`].
    pub fn connect(
        address: &str,
        rank: u32,
        size: u32,
        secret: &Secret,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<Client> {
        if secret.len() > MAX_SECRET {
            return Err(Error::BadArguments(format!(
                "a secret of {} bytes (SHOAL_SECRET; at most {MAX_SECRET})",
                secret.len()
            )));
        }
        let end = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        let fail = |why: String| Error::Rendezvous {
            address: address.to_string(),
            why,
        };
        loop {
            let last = match Client::try_connect(address, rank, size, secret, max_frame) {
                Ok(c) => return Ok(c),
                Err(Error::Refused(why)) => {
                    return Err(Error::Refused(format!("{why} (rendezvous {address})")))
                }
                Err(e) => e,
            };
            let now = Instant::now();
            if now >= end {
                return Err(fail(format!(
                    "not reached within {timeout:?} (is rank 0 running, and is this its address?): {last}"
                )));
            }
            std::thread::sleep(pause.min(end - now));
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn try_connect(
        address: &str,
        rank: u32,
        size: u32,
        secret: &Secret,
        max_frame: usize,
    ) -> Result<Client> {
        let addrs: Vec<_> = address
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolving {address}"), e))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let mut c = Client {
                        stream,
                        address: address.to_string(),
                        max_frame,
                        broken: false,
                    };
                    return match c.call(
                        &Request::Hello {
                            version: VERSION,
                            rank,
                            size,
                            secret: secret.clone(),
                        },
                        Duration::from_secs(10),
                    )? {
                        Reply::Ok => Ok(c),
                        Reply::Refused(why) => Err(Error::Refused(why)),
                        other => Err(Error::Malformed {
                            what: "rendezvous hello answer",
                            why: format!("{other:?}"),
                        }),
                    };
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::io(
            format!("connecting to {address}"),
            last.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")),
        ))
    }

    /// Sends `req` and reads its answer, waiting up to `wait` (plus some
    /// slack) for it.
    pub fn call(&mut self, req: &Request, wait: Duration) -> Result<Reply> {
        if self.broken {
            return Err(Error::Rendezvous {
                address: self.address.clone(),
                why: "an earlier call on this connection failed half-way".into(),
            });
        }
        let mut b = Vec::new();
        req.encode(&mut b);
        if let Err(e) = write_frame(&mut self.stream, &b) {
            let e = self.lost(e);
            return Err(self.fail(e));
        }
        self.read(wait)
    }

    /// Reads the next answer (also an interim one), waiting up to `wait`
    /// plus some slack.
    pub fn read(&mut self, wait: Duration) -> Result<Reply> {
        let _ = self
            .stream
            .set_read_timeout(Some(wait.saturating_add(SLACK)));
        let r = match read_frame(&mut self.stream, self.max_frame) {
            Ok(Some(body)) => Reply::decode(&body),
            Ok(None) => Err(Error::Rendezvous {
                address: self.address.clone(),
                why: "rank 0's rendezvous closed the connection (rank 0 gone?)".into(),
            }),
            Err(Error::Io { source, .. }) => Err(self.lost(source)),
            Err(e) => Err(e),
        };
        r.map_err(|e| self.fail(e))
    }

    /// Gives the connection up after `e` (see `broken`).
    fn fail(&mut self, e: Error) -> Error {
        self.broken = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        e
    }

    fn lost(&self, e: std::io::Error) -> Error {
        Error::Rendezvous {
            address: self.address.clone(),
            why: format!("the connection failed: {e} (rank 0 gone?)"),
        }
    }
}
