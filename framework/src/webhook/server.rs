//! The webhook server: TLS, a minimal HTTP/1.1 exchange per connection
//! (one POST of an AdmissionReview, one JSON answer), dispatch by path.

use super::Route;
use super::review::denied;
use crate::data::DataMap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// AdmissionReviews are small; this bounds what one request may make us read.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Serves `routes` on `listener` over TLS until dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    routes: Vec<Route>,
    data: Arc<DataMap>,
) -> Result<(), crate::Error> {
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        )
        .map_err(|e| crate::Error::Config(format!("webhook TLS setup: {e}")))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let routes: Arc<HashMap<String, Route>> =
        Arc::new(routes.into_iter().map(|r| (r.path(), r)).collect());
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, routes, data) = (acceptor.clone(), routes.clone(), data.clone());
        tokio::spawn(async move {
            let exchange = async {
                let mut tls = acceptor.accept(sock).await?;
                exchange(&mut tls, &routes, data).await
            };
            match tokio::time::timeout(Duration::from_secs(30), exchange).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "webhook connection failed"),
                Err(_) => debug!("webhook connection timed out"),
            }
        });
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    routes: &HashMap<String, Route>,
    data: Arc<DataMap>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return respond(s, "431 Request Header Fields Too Large", &json!({})).await;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path).to_string();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        return respond(s, "413 Payload Too Large", &json!({})).await;
    }
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..(head_end + length).min(buf.len())];
    let Some(route) = routes.get(&path) else {
        return respond(s, "404 Not Found", &json!({"error": "no such webhook"})).await;
    };
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let msg = json!({"error": format!("not an AdmissionReview: {e}")});
            return respond(s, "400 Bad Request", &msg).await;
        }
    };
    let request = review.get("request").cloned().unwrap_or(Value::Null);
    let response = if request.is_object() {
        (route.review)(request, data).await
    } else {
        denied(&request, "the AdmissionReview has no request")
    };
    let answer = json!({
        "apiVersion": review.get("apiVersion").cloned().unwrap_or(json!("admission.k8s.io/v1")),
        "kind": "AdmissionReview",
        "response": response,
    });
    respond(s, "200 OK", &answer).await
}

async fn respond<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: &str,
    body: &Value,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    s.shutdown().await
}
