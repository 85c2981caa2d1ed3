//! TLS set-up for clients built outside the framework.
//!
//! kube-rs talks TLS through rustls. rustls picks its process-wide crypto
//! provider automatically only when exactly one of its `ring` / `aws-lc-rs`
//! features is enabled. In a workspace where another crate pulls in the
//! other provider (an S3 SDK, for instance), Cargo's feature unification
//! enables both and the first TLS handshake panics. Operators call
//! [`install_crypto_provider`] once, before building a `kube::Client`.

/// Install rustls' `ring` provider as the process default, unless one is
/// already installed. Safe to call any number of times, from any thread.
pub fn install_crypto_provider() {
    // `Err` means another provider won the race or was installed earlier;
    // either way a default now exists, which is all a client needs.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_provider_exists_after_install_even_when_called_twice() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
