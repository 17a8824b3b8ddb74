//! The floor: a raw hyper HTTP/1.1 server that answers every request with its own body and
//! does no FLAME work (no signature, no JSON, no dispatch). It is configured like the runner
//! server (keep-alive, `TCP_NODELAY`, one task per connection), so the difference between
//! the two is what FLAME adds. For payloads: `POST /upload` reads the body whole and answers
//! its length; `GET /download?n=N` answers `N` bytes.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::net::TcpListener;

/// Serves the echo on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(echo);
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/download" {
        let n: usize = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return Ok(Response::new(Full::new(Bytes::from(vec![0xA5u8; n]))));
    }
    let upload = req.uri().path() == "/upload";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if upload {
        return Ok(Response::new(Full::new(Bytes::from(body.len().to_string()))));
    }
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(response)
}
