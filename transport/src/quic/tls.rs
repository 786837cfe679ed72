//! TLS for the QUIC backend: TLS 1.3 only, rustls on the `ring` provider.
//! A binding endpoint makes a self-signed certificate (rcgen); clients
//! trust exactly the certificate whose SHA-256 the address pins
//! (`quic://HOST:PORT?pin=HEX`), and still check that the server holds its
//! key: [`Pinned`] compares the fingerprint, then verifies the handshake
//! signature like any verifier.

use crate::error::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// First bytes of a saved identity.
const IDENTITY_MAGIC: &[u8] = b"shoal-quic-identity-1\n";

/// The ALPN protocol of shoal over QUIC.
pub const ALPN: &[u8] = b"shoal/2";

fn tls_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io {
        what: format!("QUIC TLS: {what}"),
        source: std::io::Error::other(e.to_string()),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A server identity: a self-signed certificate and its key.
///
/// ```
/// use shoal_transport::quic::tls::{fingerprint, Identity};
/// let id = Identity::generate()?;
/// assert_eq!(id.pin(), fingerprint(id.cert()));
/// let _tls = id.server_config()?; // for a quinn server of your own
/// # Ok::<(), shoal_transport::Error>(())
/// ```
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new self-signed certificate (ECDSA P-256) for `shoal`.
    pub fn generate() -> Result<Identity> {
        let ck = rcgen::generate_simple_self_signed(vec!["shoal".to_string()])
            .map_err(|e| tls_err("generating a certificate", e))?;
        Ok(Identity {
            cert: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        })
    }

    /// The certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// An identity from a certificate and its PKCS#8 private key (DER),
    /// checked to go together: a restarted server given the identity it
    /// had keeps its pin, so its clients connect again by themselves.
    pub fn from_der(cert: Vec<u8>, key_pkcs8: Vec<u8>) -> Result<Identity> {
        let id = Identity {
            cert: CertificateDer::from(cert),
            key: PrivatePkcs8KeyDer::from(key_pkcs8),
        };
        id.server_config()?;
        Ok(id)
    }

    /// Writes this identity (certificate and private key) to `path`,
    /// readable by its owner only: written to a new file beside it (mode
    /// 0600, never following a link), synced, then renamed over `path`, so
    /// a crash leaves the old file or the new one, never a damaged one.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| Error::Io {
            what: format!("writing the QUIC identity {}", path.display()),
            source: e,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io)?;
        let key = self.key.secret_pkcs8_der();
        let mut out = Vec::with_capacity(16 + self.cert.len() + key.len());
        out.extend_from_slice(IDENTITY_MAGIC);
        out.extend_from_slice(&(self.cert.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.cert);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        let written = f.write_all(&out).and_then(|_| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|_| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }

    /// Reads an identity [`save`](Self::save) wrote (checked: lengths,
    /// and that the key is the certificate's).
    pub fn load(path: &std::path::Path) -> Result<Identity> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            what: format!("reading the QUIC identity {}", path.display()),
            source: e,
        })?;
        let bad = |what: &'static str| Error::Corrupt {
            what,
            found: bytes.len() as u64,
            expected: "a file Identity::save wrote",
        };
        let rest = bytes
            .strip_prefix(IDENTITY_MAGIC)
            .ok_or(bad("QUIC identity file header"))?;
        let take = |r: &[u8]| -> Option<(Vec<u8>, usize)> {
            let n = u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize;
            Some((r.get(4..4 + n)?.to_vec(), 4 + n))
        };
        let (cert, used) = take(rest).ok_or(bad("QUIC identity certificate length"))?;
        let (key, used2) = take(&rest[used..]).ok_or(bad("QUIC identity key length"))?;
        if used + used2 != rest.len() {
            return Err(bad("QUIC identity file length"));
        }
        Identity::from_der(cert, key)
    }

    /// Its certificate's fingerprint: the pin clients need.
    pub fn pin(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    /// A rustls server configuration presenting this identity.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err("server protocol versions", e))?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(|e| tls_err("server certificate", e))?;
        c.alpn_protocols = vec![ALPN.to_vec()];
        Ok(c)
    }
}

/// Trusts exactly the server certificate with SHA-256 `pin`, and checks
/// the handshake signatures with it.
#[derive(Debug)]
pub struct Pinned {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    /// A verifier for the certificate whose SHA-256 is `pin`.
    pub fn new(pin: [u8; 32]) -> Pinned {
        Pinned {
            pin,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // The pin is public (it travels in addresses): a plain comparison.
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only: a TLS 1.2 handshake never gets this far.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client configuration trusting only the certificate `pin`
/// (TLS 1.3, ALPN [`ALPN`]).
pub fn client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("client protocol versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned::new(pin)))
        .with_no_client_auth();
    c.alpn_protocols = vec![ALPN.to_vec()];
    Ok(c)
}
