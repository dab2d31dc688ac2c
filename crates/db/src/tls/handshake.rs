//! The rustls side of [`super`]: tokio-postgres' connector factory (which records how far a
//! connection got), the client config built from the certificate files at each handshake, and
//! the verifiers of the unverified and verify-ca modes.

use super::*;

/// tokio-postgres' connector factory: remembers whether a handshake was started (for allow and
/// prefer) and builds the rustls config only then.
#[derive(Clone)]
pub(super) struct MakeTls {
    pub(super) settings: Arc<TlsSettings>,
    pub(super) tried: Arc<AtomicBool>,
    pub(super) progress: Progress,
}

pub(super) struct Tls {
    settings: Arc<TlsSettings>,
    tried: Arc<AtomicBool>,
    progress: Progress,
    hostname: String,
}

impl MakeTlsConnect<Socket> for MakeTls {
    type Stream = TlsStream;
    type TlsConnect = Tls;
    type Error = io::Error;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Tls, io::Error> {
        // tokio-postgres asks for the connector once the TCP connection is up.
        self.progress.set(TCP_UP);
        Ok(Tls {
            settings: self.settings.clone(),
            tried: self.tried.clone(),
            progress: self.progress.clone(),
            hostname: hostname.to_string(),
        })
    }
}

impl TlsConnect<Socket> for Tls {
    type Stream = TlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream, io::Error>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        self.tried.store(true, Ordering::SeqCst);
        self.progress.set(TLS_STARTED);
        Box::pin(async move {
            let settings = self.settings.clone();
            let mut config = tokio::task::spawn_blocking(move || client_config(&settings))
                .await
                .map_err(io::Error::other)?
                .map_err(io::Error::other)?;
            // A host name rustls cannot take (say, with an underscore) only matters when it is
            // checked; otherwise the handshake goes on without SNI, as it would for an address.
            let mut hostname = self.hostname.as_str();
            if ServerName::try_from(hostname).is_err() {
                if self.settings.mode == SslMode::VerifyFull {
                    return Err(io::Error::other(SetupError(format!(
                        "sslmode=verify-full cannot check the host name {hostname:?}: it is not a \
                         valid DNS name\nHINT: connect with the name the certificate lists, or use \
                         sslmode=verify-ca"
                    ))));
                }
                config.enable_sni = false;
                hostname = "unchecked.invalid";
            }
            let mut maker = MakeRustlsConnect::new(config);
            let tls = <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(
                &mut maker, hostname,
            )
            .map_err(io::Error::other)?;
            let stream = tls.connect(stream).await?;
            self.progress.set(TLS_DONE);
            Ok(stream)
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The rustls config for `tls`, from the files as they are now.
pub fn client_config(tls: &TlsSettings) -> Result<ClientConfig, SetupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError(format!("TLS setup: {e}")))?;
    let roots = root_store(tls)?;
    let verifier: Arc<dyn ServerCertVerifier> = match (roots, tls.mode) {
        (None, _) => Arc::new(NoVerification(provider.clone())),
        (Some(roots), mode) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| SetupError(format!("TLS setup: {e}")))?;
            match mode {
                SslMode::VerifyFull => webpki,
                // verify-ca, and the weaker modes that verify because a root file exists.
                _ => Arc::new(ChainOnly(webpki)),
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client_identity(tls)? {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(|e| {
            SetupError(format!(
                "the client certificate {} does not go with its key {}: {e}",
                shown(tls.cert.as_deref()),
                shown(tls.key.as_deref())
            ))
        }),
        None => Ok(builder.with_no_client_auth()),
    }
}

fn shown(p: Option<&Path>) -> String {
    p.map_or_else(String::new, |p| p.display().to_string())
}

/// The trusted roots, or None when the mode does not verify (no root file with require or
/// weaker). verify-ca / verify-full without the file is an error, as in libpq.
fn root_store(tls: &TlsSettings) -> Result<Option<RootCertStore>, SetupError> {
    let mut store = RootCertStore::empty();
    match &tls.root_cert {
        Some(RootCert::System) => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(SetupError(
                    "sslrootcert=system: no trusted root certificate found in the system store \
                     (install ca-certificates, or set SSL_CERT_FILE)"
                        .into(),
                ));
            }
        }
        Some(RootCert::File { path, given }) => {
            if !path.exists() {
                if !tls.mode.verifies() {
                    return Ok(None);
                }
                let what = if *given { "" } else { " (the default)" };
                return Err(SetupError(format!(
                    "root certificate file {}{what} does not exist, and sslmode={} needs it to \
                     check the server certificate\nHINT: put the CA certificate there or set \
                     sslrootcert (PGSSLROOTCERT) to it, use sslrootcert=system for the system's \
                     trusted roots, or use sslmode=require to encrypt without checking",
                    path.display(),
                    tls.mode
                )));
            }
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    SetupError(format!(
                        "cannot read root certificate file {}: {e}\nHINT: it must hold PEM \
                         certificates readable by this user",
                        path.display()
                    ))
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(SetupError(format!(
                    "root certificate file {} holds no usable certificate\nHINT: it must hold \
                     the PEM certificate of the CA that signed the server's certificate",
                    path.display()
                )));
            }
        }
        None if tls.mode.verifies() => {
            return Err(SetupError(format!(
                "sslmode={} needs a root certificate, and there is no home directory to find \
                 ~/.postgresql/root.crt in\nHINT: set sslrootcert (or PGSSLROOTCERT)",
                tls.mode
            )));
        }
        None => return Ok(None),
    }
    Ok(Some(store))
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate and key, when the certificate file exists (libpq ignores a missing
/// one); its key must exist and be private (u=rw, or u=rw,g=r when root owns it).
fn client_identity(tls: &TlsSettings) -> Result<Option<Identity>, SetupError> {
    let Some(cert) = tls.cert.as_deref().filter(|p| p.exists()) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            SetupError(format!(
                "cannot read client certificate file {}: {e}",
                cert.display()
            ))
        })?;
    let Some(key) = tls.key.as_deref() else {
        return Err(SetupError(format!(
            "client certificate {} is present but no private key file is configured\nHINT: set \
             sslkey (or PGSSLKEY)",
            cert.display()
        )));
    };
    let meta = std::fs::metadata(key).map_err(|e| {
        SetupError(format!(
            "certificate present, but not private key file {}: {e}\nHINT: set sslkey (or \
             PGSSLKEY) to the key of {}",
            key.display(),
            cert.display()
        ))
    })?;
    let mode = meta.permissions().mode();
    let private = if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    };
    if !private {
        return Err(SetupError(format!(
            "private key file {} has group or world access; permissions should be u=rw (0600) \
             or less, or u=rw,g=r (0640) or less if owned by root\nHINT: chmod 0600 {}",
            key.display(),
            key.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        SetupError(format!(
            "cannot read private key file {}: {e}\nHINT: it must be an unencrypted PEM key \
             (PKCS#8, PKCS#1 or SEC1)",
            key.display()
        ))
    })?;
    Ok(Some((certs, key_der)))
}

/// Checks nothing about the certificate, but the handshake signatures against it (so the peer
/// holds the certificate's key): sslmode=require without a root certificate file.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The chain against the roots, not the host name (verify-ca). webpki checks the chain before
/// the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
