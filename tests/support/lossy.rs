//! A kube client whose answer to one chosen status write is lost after the API server applied
//! it, as when a connection drops on the way back: the write landed, the caller sees an error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Method, Request};
use kube::Client;
use kube::client::{Body, ClientBuilder};
use tower::{BoxError, Layer, Service};

/// Loses the answer to the next status write whose body contains the armed marker, once; and,
/// if asked, the answer to the read that follows it too.
#[derive(Clone, Default)]
pub struct LoseAnswer {
    marker: Arc<Mutex<Option<String>>>,
    lost: Arc<AtomicUsize>,
    /// Reads still to lose the answer of: set when the write's answer is lost.
    reads: Arc<AtomicUsize>,
    read_after: Arc<AtomicBool>,
}

impl LoseAnswer {
    /// The next status write whose body contains `marker` lands, and its answer is lost; with
    /// `read_after`, so is the answer to the next read (the writer's attempt to find out).
    pub fn arm(&self, marker: &str, read_after: bool) {
        self.read_after.store(read_after, Ordering::SeqCst);
        *self.marker.lock().expect("marker") = Some(marker.to_string());
    }

    /// How many answers were lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    /// A client of the test control plane that loses the armed answer.
    pub async fn client(&self) -> Client {
        let config = super::config_for(super::control_plane()).await;
        ClientBuilder::try_from(config).expect("client").with_layer(self).build()
    }

    /// Whether the write with `body` is the armed one (which disarms it).
    fn take(&self, body: &[u8]) -> bool {
        let mut marker = self.marker.lock().expect("marker");
        let hit = marker.as_ref().is_some_and(|m| String::from_utf8_lossy(body).contains(m.as_str()));
        if hit {
            *marker = None;
            self.lost.fetch_add(1, Ordering::SeqCst);
            if self.read_after.load(Ordering::SeqCst) {
                self.reads.store(1, Ordering::SeqCst);
            }
        }
        hit
    }

    /// Whether the answer to this read is to be lost.
    fn take_read(&self) -> bool {
        self.reads.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

impl<S> Layer<S> for LoseAnswer {
    type Service = Lossy<S>;

    fn layer(&self, inner: S) -> Lossy<S> {
        Lossy { inner, armed: self.clone() }
    }
}

pub struct Lossy<S> {
    inner: S,
    armed: LoseAnswer,
}

impl<S> Service<Request<Body>> for Lossy<S>
where
    S: Service<Request<Body>, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let status_write = req.method() == Method::PATCH && req.uri().path().ends_with("/status");
        let body = if status_write { req.body().try_clone() } else { None };
        let lose_read = req.method() == Method::GET && self.armed.take_read();
        let armed = self.armed.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            // The request goes out whatever happens to its answer.
            let response = answer.await?;
            if lose_read {
                return Err("the answer to the read was lost on its way back".into());
            }
            if let Some(body) = body
                && armed.take(&body.collect_bytes().await?)
            {
                return Err("the answer was lost on its way back".into());
            }
            Ok(response)
        })
    }
}
