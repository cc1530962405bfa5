//! The replication link's TLS: this node's key and certificate, the rustls settings
//! both ends use (TLS 1.3 only, both sides present a certificate), the fingerprint a
//! peer is pinned by, and the channel binding the secret proofs cover.
//!
//! Trust does not come from a CA. A certificate is accepted whoever signed it, but the
//! TLS 1.3 handshake signature is verified with it, so the other end holds the key the
//! certificate names. Who that is, the shared secret says: the HMAC proofs of
//! `wire::auth` are computed over [`binding`], a value both ends of one TLS session
//! derive and a relay that terminates TLS cannot make equal on its two legs. The key
//! fingerprint is then pinned in the catalog, so a changed key is noticed.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

/// Where the node keeps its key and certificate, under the data dir (mode 0700).
pub const TLS_DIR: &str = "tls";
const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.crt";
/// The name the client asks for. Nothing checks it: the verifiers accept any name.
const SERVER_NAME: &str = "twinlun-peer";
/// Bytes buffered between TLS and the socket: rustls reads and writes one record (16
/// KiB) at a time, and a system call per record cost the receiver more CPU than
/// decrypting it. A client buffers both ways; the listener buffers reads once the
/// peer has authenticated (`readahead`), so strangers cost it nothing of the kind.
pub const SOCKET_BUFFER: usize = 256 << 10;

/// The exporter label of the channel binding (RFC 5705 / RFC 8446 section 7.5).
const BINDING_LABEL: &[u8] = b"EXPORTER-twinlun-replication-auth";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("saving {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: crate::durable::ReplaceError,
    },
    #[error("cannot make this node's key and certificate")]
    Generate(#[source] rcgen::Error),
    #[error("{path}: not a usable key (delete {dir} to make a new key)", dir = .path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    BadKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("this node's key and certificate in {0} do not make a TLS identity")]
    Config(PathBuf, #[source] rustls::Error),
}

/// This node's TLS identity and the client and server settings made from it.
pub struct Tls {
    /// `sha256:` + hex of this node's SubjectPublicKeyInfo: what peers pin.
    pub fingerprint: String,
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    /// The last authenticated link with each peer (by its name here), either way.
    seen: parking_lot::Mutex<std::collections::HashMap<String, Seen>>,
}

/// What a peer's last authenticated connection showed, for `peer show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub presented: String,
    pub version: String,
    pub cipher: String,
    pub at_unix: u64,
}

impl std::fmt::Debug for Tls {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The identity kept in `DATA_DIR/tls/`, made there at first start. A key without
    /// its certificate (a crash between the two writes) gets a new certificate for the
    /// same key, so the fingerprint peers pinned stays.
    pub fn load_or_create(data_dir: &Path) -> Result<Tls, TlsError> {
        let dir = data_dir.join(TLS_DIR);
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        private(&dir, 0o700).map_err(io_err(&dir))?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let key = match std::fs::read(&key_path) {
            Ok(der) => {
                rcgen::KeyPair::try_from(der.as_slice()).map_err(|source| TlsError::BadKey {
                    path: key_path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
                save(&key_path, &key.serialize_der())?;
                // The old certificate, if any, names a key that is gone.
                let _ = std::fs::remove_file(&cert_path);
                tracing::info!(path = %key_path.display(), "made this node's replication key");
                key
            }
            Err(e) => return Err(io_err(&key_path)(e)),
        };
        private(&key_path, 0o600).map_err(io_err(&key_path))?;
        let cert = match std::fs::read(&cert_path) {
            Ok(der) => CertificateDer::from(der),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
                    .and_then(|p| p.self_signed(&key))
                    .map_err(TlsError::Generate)?;
                save(&cert_path, cert.der())?;
                cert.der().clone()
            }
            Err(e) => return Err(io_err(&cert_path)(e)),
        };
        private(&cert_path, 0o600).map_err(io_err(&cert_path))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Tls::new(cert, key).map_err(|e| TlsError::Config(dir, e))
    }

    /// An identity from a certificate and its key (TLS 1.3 only, ring).
    pub fn new(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Tls, rustls::Error> {
        let fingerprint = fingerprint(&cert)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyKey(provider.clone()));
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(vec![cert.clone()], key.clone_key())?;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert], key)?;
        Ok(Tls {
            fingerprint,
            client: Arc::new(client),
            server: Arc::new(server),
            seen: Default::default(),
        })
    }

    /// Records an authenticated link with `peer`.
    pub fn saw(&self, peer: &str, link: &Link) {
        let seen = Seen {
            presented: link.presented.clone(),
            version: link.version.clone(),
            cipher: link.cipher.clone(),
            at_unix: crate::time::unix_secs(std::time::SystemTime::now()),
        };
        self.seen.lock().insert(peer.to_string(), seen);
    }

    /// The last authenticated link with `peer` since the node started.
    pub fn seen(&self, peer: &str) -> Option<Seen> {
        self.seen.lock().get(peer).cloned()
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// The server name the client sends (any: nothing checks it).
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
    }
}

/// Writes `bytes` to `path` durably; the directory is 0700 already, so the file is
/// private from its first byte whatever mode it is created with.
fn save(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    crate::durable::replace(path, bytes).map_err(|source| TlsError::Save {
        path: path.to_path_buf(),
        source,
    })
}

/// Narrows `path` to `mode` when it is looser (a data dir copied with other modes).
fn private(path: &Path, mode: u32) -> io::Result<()> {
    let now = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if now & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `sha256:` + hex of the certificate's SubjectPublicKeyInfo: the key, whatever
/// certificate carries it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> Result<String, rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(parsed.subject_public_key_info().as_ref()))
    ))
}

/// What one end of a TLS session learned of the other, once the handshake is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The fingerprint of the key the other end presented.
    pub presented: String,
    /// `TLSv1.3`.
    pub version: String,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The exporter value the secret proofs cover.
    pub binding: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the other end presented no certificate")]
    NoCertificate,
    #[error("the other end's certificate")]
    Certificate(#[source] rustls::Error),
    #[error("deriving the channel binding")]
    Exporter(#[source] rustls::Error),
}

/// Reads what a finished handshake established: the other end's key, the version and
/// suite, and the channel binding.
pub fn link<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Link, LinkError> {
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(LinkError::NoCertificate)?;
    let presented = fingerprint(cert).map_err(LinkError::Certificate)?;
    let binding = conn
        .export_keying_material([0u8; 32], BINDING_LABEL, None)
        .map_err(LinkError::Exporter)?;
    Ok(Link {
        presented,
        version: match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_string(),
        },
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown")
            .to_string(),
        binding,
    })
}

/// Accepts any certificate that parses, and verifies the handshake signatures made
/// with its key: the pin and the channel-bound secret proofs decide trust.
#[derive(Debug)]
struct AnyKey(Arc<CryptoProvider>);

impl AnyKey {
    fn parses(cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        ParsedCertificate::try_from(cert).map(|_| ())
    }

    /// The handshake signature made with `cert`'s key, checked: the one check both
    /// directions (server and client certificate) make.
    fn signed13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    /// As [`AnyKey::signed13`] for TLS 1.2, which the configs never offer.
    fn signed12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for AnyKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::parses(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signed12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signed13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for AnyKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::parses(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signed12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signed13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> (
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
        rcgen::KeyPair,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), der, key)
    }

    #[test]
    fn the_fingerprint_is_of_the_key_not_the_certificate() {
        let (cert, _, key) = identity();
        // Another certificate for the same key: another serial, other names.
        let other = rcgen::CertificateParams::new(vec!["y".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_ne!(cert.as_ref(), other.der().as_ref());
        let fp = fingerprint(&cert).unwrap();
        assert_eq!(fp, fingerprint(other.der()).unwrap());
        assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(key.public_key_der()))
        );
        assert_eq!(fp, want);
        let (another, _, _) = identity();
        assert_ne!(fp, fingerprint(&another).unwrap());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(fingerprint(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
        assert!(AnyKey::parses(&CertificateDer::from(b"not der".to_vec())).is_err());
    }

    /// Presents one key's certificate and signs with another: what an impostor who
    /// copied a certificate (public) but not its key would do.
    #[derive(Debug)]
    struct Impostor(Arc<rustls::sign::CertifiedKey>);

    impl Impostor {
        fn new() -> Impostor {
            let (cert, _, _) = identity();
            let (_, other_key, _) = identity();
            let signer = rustls::crypto::ring::sign::any_supported_type(&other_key).unwrap();
            Impostor(Arc::new(rustls::sign::CertifiedKey::new(
                vec![cert],
                signer,
            )))
        }
    }

    impl rustls::client::ResolvesClientCert for Impostor {
        fn resolve(
            &self,
            _hints: &[&[u8]],
            _schemes: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }

    impl rustls::server::ResolvesServerCert for Impostor {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    #[tokio::test]
    async fn a_certificate_without_its_key_fails_the_handshake_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let real = Tls::load_or_create(dir.path()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyKey(provider.clone()));
        // An impostor client against the real listener.
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(Arc::new(Impostor::new()));
        let (c, s) = tokio::io::duplex(1 << 16);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (_, server) = tokio::join!(
            connector.connect(Tls::server_name(), c),
            real.acceptor().accept(s)
        );
        let e = server.unwrap_err().to_string();
        assert!(e.to_lowercase().contains("signature"), "{e}");
        // An impostor listener against the real client.
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Impostor::new()));
        let (c, s) = tokio::io::duplex(1 << 16);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (client, _) = tokio::join!(
            real.connector().connect(Tls::server_name(), c),
            acceptor.accept(s)
        );
        let e = client.unwrap_err().to_string();
        assert!(e.to_lowercase().contains("signature"), "{e}");
    }

    #[test]
    fn the_identity_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = Tls::load_or_create(dir.path()).unwrap();
        let tls = dir.path().join(TLS_DIR);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tls), 0o700);
        assert_eq!(mode(&tls.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&tls.join(CERT_FILE)), 0o600);
        let again = Tls::load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        // A key whose certificate was lost keeps its fingerprint.
        std::fs::remove_file(tls.join(CERT_FILE)).unwrap();
        let recert = Tls::load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint, recert.fingerprint);
        // Loose modes are narrowed.
        std::fs::set_permissions(tls.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        Tls::load_or_create(dir.path()).unwrap();
        assert_eq!(mode(&tls.join(KEY_FILE)), 0o600);
        // A new key is a new fingerprint.
        std::fs::remove_dir_all(&tls).unwrap();
        let fresh = Tls::load_or_create(dir.path()).unwrap();
        assert_ne!(first.fingerprint, fresh.fingerprint);
        // A damaged key is an error naming the file, not a silent new identity.
        std::fs::write(tls.join(KEY_FILE), b"garbage").unwrap();
        let e = Tls::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains(KEY_FILE), "{e}");
    }

    #[tokio::test]
    async fn both_ends_see_the_same_binding_and_each_other_s_key() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let a = Tls::load_or_create(dir_a.path()).unwrap();
        let b = Tls::load_or_create(dir_b.path()).unwrap();
        let (c, s) = tokio::io::duplex(1 << 16);
        let (client, server) = tokio::join!(
            a.connector().connect(Tls::server_name(), c),
            b.acceptor().accept(s)
        );
        let (client, server) = (client.unwrap(), server.unwrap());
        let at_client = link(client.get_ref().1).unwrap();
        let at_server = link(server.get_ref().1).unwrap();
        assert_eq!(at_client.binding, at_server.binding);
        assert_eq!(at_client.presented, b.fingerprint);
        assert_eq!(at_server.presented, a.fingerprint);
        assert_eq!(at_client.version, "TLSv1.3");
        assert!(
            at_client.cipher.starts_with("TLS13_"),
            "{}",
            at_client.cipher
        );
    }
}
