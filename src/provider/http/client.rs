//! The client side of the protocol's transport: a provider's base URL, a rustls (ring) HTTP
//! client trusting the system roots plus an optional CA bundle, and the bearer token. Shared by
//! the http driver, the conformance suite and the provider-sim process helper.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, Url};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why an endpoint could not be set up. Never retryable: the configuration must change.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint {endpoint:?} is not an http(s) URL: {reason}")]
    InvalidUrl { endpoint: String, reason: String },
    #[error("CA bundle: {0}")]
    CaBundle(String),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("HTTP client setup: {0}")]
    Client(#[source] reqwest::Error),
}

/// A bearer token. Its `Debug` and `Display` never show it, so it cannot leak into logs,
/// Events, status or error strings by formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// Trims surrounding whitespace: token files and Secrets usually end with a newline.
    pub fn new(token: &str) -> Self {
        Self(token.trim().into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token itself, for comparing with a presented one.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header, marked sensitive so the HTTP stack never logs it.
    fn header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// A provider's base URL and the HTTP client that reaches it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Always ends with `/`, so protocol paths append instead of replacing the last segment.
    base: Url,
    http: reqwest::Client,
}

impl Endpoint {
    /// `endpoint` is the provider's base URL (any path prefix is kept); `ca_bundle` is PEM
    /// trusted in addition to the system roots; `timeout` bounds one HTTP exchange.
    pub fn new(endpoint: &str, ca_bundle: Option<&str>, timeout: Duration) -> Result<Self, EndpointError> {
        let invalid = |reason: String| EndpointError::InvalidUrl { endpoint: endpoint.to_owned(), reason };
        let mut base = Url::parse(endpoint).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("the scheme must be http or https".to_owned()));
        }
        if !base.username().is_empty() || base.password().is_some() {
            // Credentials belong in the Secret; a URL ends up in logs and error strings, so
            // not even this error repeats it.
            let _ = (base.set_username(""), base.set_password(None));
            return Err(EndpointError::InvalidUrl {
                endpoint: base.to_string(),
                reason: "credentials in the URL are not allowed; use the token Secret".to_owned(),
            });
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(ca_bundle)?)
            // A redirect could carry the request, and the token, somewhere unvetted.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(EndpointError::Client)?;
        Ok(Self { base, http })
    }

    /// The base URL, as given (plus a trailing `/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `base` + `/v1/` + `segments`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push(super::wire::VERSION).extend(segments);
        }
        url
    }

    /// A request to `/v1/<segments>`, authenticated with `token` if given.
    pub fn request(&self, method: Method, segments: &[&str], token: Option<&BearerToken>) -> RequestBuilder {
        let request = self.http.request(method, self.url(segments));
        #[cfg(feature = "otel")]
        let request = request.headers(crate::telemetry::context_headers());
        match token.and_then(BearerToken::header) {
            Some(header) => request.header(AUTHORIZATION, header),
            None => request,
        }
    }
}

/// rustls with the ring provider, trusting the system roots and `ca_bundle`.
fn tls_config(ca_bundle: Option<&str>) -> Result<rustls::ClientConfig, EndpointError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unparseable system roots are skipped, as every TLS client does.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(pem) = ca_bundle {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EndpointError::CaBundle(format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(EndpointError::CaBundle("no PEM certificate found".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| EndpointError::CaBundle(format!("unusable certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The system's trusted roots, read once per process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() {
            tracing::debug!(errors = found.errors.len(), "some system CA certificates could not be loaded");
        }
        found.certs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_base_path_and_escape_segments() {
        let e = Endpoint::new("https://compute.example.com/switchyard", None, Duration::from_secs(1)).unwrap();
        assert_eq!(e.url(&["health"]).as_str(), "https://compute.example.com/switchyard/v1/health");
        assert_eq!(
            e.url(&["instances", "a/b c"]).as_str(),
            "https://compute.example.com/switchyard/v1/instances/a%2Fb%20c"
        );
        let e = Endpoint::new("http://127.0.0.1:8080/", None, Duration::from_secs(1)).unwrap();
        assert_eq!(e.url(&["instances"]).as_str(), "http://127.0.0.1:8080/v1/instances");
    }

    #[test]
    fn bad_endpoints_and_bundles_are_clear_errors() {
        let t = Duration::from_secs(1);
        assert!(matches!(Endpoint::new("ftp://x", None, t), Err(EndpointError::InvalidUrl { .. })));
        assert!(matches!(Endpoint::new("not a url", None, t), Err(EndpointError::InvalidUrl { .. })));
        let err = Endpoint::new("https://user:secret@x", None, t).unwrap_err().to_string();
        assert!(err.contains("credentials") && !err.contains("secret@"), "{err}");
        let err = Endpoint::new("https://x", Some("garbage"), t).unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn tokens_never_format() {
        let t = BearerToken::new("s3cret\n");
        assert_eq!(t.expose(), "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(t.header().unwrap().is_sensitive());
    }
}
