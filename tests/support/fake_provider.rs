//! A provider that answers whatever a test tells it to, over plain HTTP/1.1: for the driver's
//! handling of answers no well-behaved provider gives (oversized, endless, malformed, none).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// What the fake provider answers.
pub enum Reply {
    /// A status and a JSON body, with its Content-Length.
    Json(u16, String),
    /// These bytes as they are (head and body), then close.
    Raw(Vec<u8>),
    /// A 200 head, then body bytes until the client hangs up; `chunked` or close-delimited.
    Endless { chunked: bool },
    /// Nothing, ever: the connection stays open without an answer.
    Hang,
    /// Close the connection without an answer.
    Close,
}

/// One HTTP/1.1 request as the fake provider saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request line, e.g. `POST /v1/instances HTTP/1.1`.
    pub line: String,
    pub authorization: Option<String>,
}

/// Reads one request (headers and a content-length body) off `stream`; None once it closes.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Seen> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let header = |name: &str| {
            text[..end].lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let length = header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        if buf.len() >= end + 4 + length {
            let line = text.lines().next().unwrap_or_default().to_owned();
            return Some(Seen { line, authorization: header("authorization") });
        }
    }
}

type Respond = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A fake provider: the requests it saw, and how many endless answers the client hung up on.
#[derive(Clone)]
pub struct Fake {
    pub endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    pub hung_up: Arc<AtomicUsize>,
}

impl Fake {
    pub async fn start(respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), respond).await
    }

    /// Listens on `ip` (any port); the endpoint names `ip`.
    pub async fn start_on(ip: IpAddr, respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = Self { endpoint: format!("http://{addr}"), seen: Arc::default(), hung_up: Arc::default() };
        let respond: Respond = Arc::new(respond);
        let state = fake.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (state, respond) = (state.clone(), respond.clone());
                tokio::spawn(async move {
                    let Some(seen) = read_request(&mut stream).await else { return };
                    state.seen.lock().unwrap_or_else(|e| e.into_inner()).push(seen.clone());
                    state.answer(&mut stream, respond(&seen)).await;
                });
            }
        });
        fake
    }

    async fn answer(&self, stream: &mut tokio::net::TcpStream, reply: Reply) {
        match reply {
            Reply::Json(status, body) => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            }
            Reply::Raw(bytes) => {
                let _ = stream.write_all(&bytes).await;
            }
            Reply::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
            Reply::Close => {}
            Reply::Endless { chunked } => {
                let framing = if chunked { "transfer-encoding: chunked\r\n" } else { "" };
                let head =
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{framing}connection: close\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let data = vec![b' '; 64 << 10];
                let chunk = if chunked {
                    [format!("{:x}\r\n", data.len()).into_bytes(), data, b"\r\n".to_vec()].concat()
                } else {
                    data
                };
                loop {
                    if stream.write_all(&chunk).await.is_err() {
                        self.hung_up.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
