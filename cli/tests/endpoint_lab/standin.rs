//! A stand-in for kube-apiserver, run by the endpoint lab test on its control-plane machines until
//! capstan installs the real control plane. It is NOT kube-apiserver: it serves TLS with the API
//! server certificate capstan issued and answers
//!
//! - `GET /readyz`: 200, `ok from <name>`;
//! - `GET /watch?seconds=N`: 200, then a line every 200 ms for N seconds (a long-lived request
//!   like a watch), then closes;
//! - anything else: 404.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub async fn serve(listen: &str, cert: &str, key: &str, name: &str) -> Result<(), Box<dyn Error>> {
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request);
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            let _ = respond(&mut tls, &path, &name).await;
            let _ = tls.shutdown().await;
        });
    }
}

async fn respond<S: AsyncWriteExt + Unpin>(stream: &mut S, path: &str, name: &str) -> std::io::Result<()> {
    if path == "/readyz" {
        let body = format!("ok from {name}\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        return stream.write_all(format!("{head}{body}").as_bytes()).await;
    }
    if let Some(query) = path.strip_prefix("/watch") {
        let seconds: u64 = query
            .strip_prefix("?seconds=")
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
            .await?;
        for tick in 0..seconds * 5 {
            stream
                .write_all(format!("tick {tick} from {name}\n").as_bytes())
                .await?;
            stream.flush().await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        return stream.write_all(b"done\n").await;
    }
    stream
        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
}
