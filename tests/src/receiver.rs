//! An HTTPS webhook receiver whose answers a test controls.
//!
//! [`Receiver`] owns a TLS listener on `127.0.0.1:0` (certificate from a [`TestCa`], HTTP/1.1
//! and h2), the log of every request it received, and the answers it gives:
//!
//! - scripted one-shot [`Response`]s ([`Receiver::script`]) are used first, in FIFO order;
//! - once the script is empty, the default response answers (200 with an empty body until
//!   [`Receiver::respond_with`] or [`Receiver::respond_with_response`] changes it).
//!
//! A request is recorded before its response is chosen and before any [`Response::delay`], so
//! a test can see a request that is still hanging. Bodies over [`MAX_BODY_BYTES`] are refused
//! with 413 and not recorded. Dropping the handle stops the listener and ends every
//! connection, including ones held open by a delayed response.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::tls::TestCa;

/// Largest request body the receiver reads.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Bound on a TLS handshake, so a silent client cannot hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path and query as sent, e.g. `/hooks/orders?tenant=t1`.
    pub path: String,
    /// All request headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When the request's body had been read.
    pub received_at: SystemTime,
}

/// An answer the receiver gives: status, headers, body and an optional delay before it.
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// Set for slow or hanging receivers; the answer is sent after this long.
    delay: Option<Duration>,
}

/// A running HTTPS receiver. Dropping it stops it.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

/// State shared by the handle and the request handler.
#[derive(Debug)]
struct Shared {
    state: Mutex<Recorded>,
    /// How many requests were recorded; `wait_for_requests` waits on it.
    count: watch::Sender<usize>,
}

#[derive(Debug)]
struct Recorded {
    requests: Vec<ReceivedRequest>,
    script: VecDeque<Response>,
    default: Response,
}

// === impl ReceivedRequest ===

impl ReceivedRequest {
    /// The value of header `name` (case-insensitive), if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON.
    pub fn try_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }

    /// The payload a JSON webhook carries: the `data` of its Standard Webhooks envelope
    /// `{"type", "timestamp", "data"}`, for assertions.
    ///
    /// # Panics
    ///
    /// If the body is not such an envelope; the message shows the body.
    #[track_caller]
    pub fn data(&self) -> serde_json::Value {
        let mut body = self.json();
        match body.as_object_mut() {
            Some(envelope) if envelope.contains_key("type") && envelope.contains_key("data") => {
                envelope.remove("data").unwrap_or_default()
            }
            _ => panic!(
                "{} {} body is not an envelope: {body}",
                self.method, self.path
            ),
        }
    }

    /// The body parsed as JSON, for assertions.
    ///
    /// # Panics
    ///
    /// If the body is not JSON; the message shows the body.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        match self.try_json() {
            Ok(value) => value,
            Err(error) => panic!(
                "{} {} body is not JSON ({error}): {:?}",
                self.method,
                self.path,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }
}

// === impl Response ===

impl Response {
    /// An answer with `status`, no extra headers, an empty body and no delay.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: None,
        }
    }

    /// Sets the status code.
    pub fn status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// Adds a header, e.g. `("retry-after", "1")`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Response {
        self.body = body.into();
        self
    }

    /// Waits this long before answering (a slow or, with a long delay, hanging receiver).
    pub fn delay(mut self, delay: Duration) -> Response {
        self.delay = Some(delay);
        self
    }

    /// Builds the HTTP response. An invalid status or header becomes a 500 explaining it, so a
    /// mistake in a test shows up in that test's assertions rather than as a dead receiver.
    fn to_http(&self) -> http::Response<Body> {
        let build = || -> anyhow::Result<http::Response<Body>> {
            let mut response = http::Response::new(Body::from(self.body.clone()));
            *response.status_mut() = StatusCode::from_u16(self.status)?;
            for (name, value) in &self.headers {
                response.headers_mut().append(
                    HeaderName::try_from(name.as_str())?,
                    HeaderValue::try_from(value.as_str())?,
                );
            }
            Ok(response)
        };
        build().unwrap_or_else(|error| {
            tracing::warn!(%error, response = ?self, "receiver response is invalid");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("herald-tests receiver: invalid scripted response {self:?}: {error}"),
            )
        })
    }
}

impl Default for Response {
    /// 200 with an empty body.
    fn default() -> Self {
        Response::new(200)
    }
}

impl From<u16> for Response {
    fn from(status: u16) -> Self {
        Response::new(status)
    }
}

// === impl Receiver ===

impl Receiver {
    /// Starts a receiver on `127.0.0.1:0` presenting `ca`'s server certificate.
    pub async fn start(ca: &TestCa) -> anyhow::Result<Receiver> {
        Self::start_with(TlsAcceptor::from(ca.server_config())).await
    }

    /// Starts one that also requires a client certificate issued by `ca` (mutual TLS): a
    /// client without one fails the handshake.
    pub async fn start_requiring_client_certs(ca: &TestCa) -> anyhow::Result<Receiver> {
        Self::start_with(TlsAcceptor::from(
            ca.server_config_requiring_client_certs()?,
        ))
        .await
    }

    async fn start_with(acceptor: TlsAcceptor) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the receiver")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Recorded {
                requests: Vec::new(),
                script: VecDeque::new(),
                default: Response::default(),
            }),
            count: watch::Sender::new(0),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(serve(listener, acceptor, router));
        Ok(Receiver {
            addr,
            shared,
            server,
        })
    }

    /// The URL of `path` on this receiver, e.g. `https://127.0.0.1:41234/hooks`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the default answer to `status` with an empty body.
    pub fn respond_with(&self, status: u16) {
        self.respond_with_response(Response::new(status));
    }

    /// Sets the default answer, used whenever the script is empty.
    pub fn respond_with_response(&self, response: Response) {
        self.shared.lock().default = response;
    }

    /// Appends one-shot answers, used in order before the default, e.g. `[500, 200]`.
    pub fn script<R: Into<Response>>(&self, responses: impl IntoIterator<Item = R>) {
        self.shared
            .lock()
            .script
            .extend(responses.into_iter().map(Into::into));
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.lock().requests.clone()
    }

    /// How many requests were received so far.
    pub fn request_count(&self) -> usize {
        *self.shared.count.borrow()
    }

    /// Waits until at least `n` requests arrived and returns all of them, oldest first.
    /// Fails after `timeout`, saying how many arrived.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ReceivedRequest>> {
        let mut count = self.shared.count.subscribe();
        // The sender lives in `self.shared`, so `wait_for` cannot see a closed channel.
        // `wait_for` answers with a guard holding the channel's read lock; it is dropped here,
        // before `requests()` takes the state lock that `record` holds while publishing.
        let arrived = tokio::time::timeout(timeout, count.wait_for(|&c| c >= n))
            .await
            .is_ok();
        if !arrived {
            let seen: Vec<String> = self
                .requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            anyhow::bail!(
                "receiver {}: expected {n} requests within {timeout:?}, {} arrived {seen:?}",
                self.addr,
                seen.len()
            );
        }
        Ok(self.requests())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Aborting the accept loop drops its `JoinSet`, which aborts every connection task and
        // the handlers running in them, delayed ones included, before they answer.
        self.server.abort();
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // A panic elsewhere cannot leave `Recorded` half-updated, so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `request` and picks its answer.
    fn record(&self, request: ReceivedRequest) -> Response {
        let mut state = self.lock();
        state.requests.push(request);
        // Updated under the lock, so counts are published in order.
        self.count.send_replace(state.requests.len());
        match state.script.pop_front() {
            Some(response) => response,
            None => state.default.clone(),
        }
    }
}

// === server ===

/// Accepts connections until aborted; each connection is a task in a set owned here.
/// Serves `router` over TLS (a certificate from `ca`) on `listener` until the task is aborted:
/// the receiver's server, for other HTTPS endpoints tests and benchmarks need.
pub fn spawn_https(listener: TcpListener, ca: &TestCa, router: Router) -> JoinHandle<()> {
    tokio::spawn(serve(
        listener,
        TlsAcceptor::from(ca.server_config()),
        router,
    ))
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(serve_connection(tcp, peer, acceptor.clone(), router.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "receiver accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = done {
                    tracing::warn!(%error, "receiver connection task failed");
                }
            }
        }
    }
}

async fn serve_connection(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, router: Router) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "receiver TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "receiver TLS handshake timed out");
            return;
        }
    };
    let served = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
        .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "receiver connection ended with an error");
    }
}

/// Records every request, whatever its method and path, and answers from the script.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(error) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body unreadable or over {MAX_BODY_BYTES} bytes: {error}"),
            );
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let response = shared.record(ReceivedRequest {
        method: parts.method.to_string(),
        path,
        headers: parts.headers,
        body,
        received_at: SystemTime::now(),
    });
    if let Some(delay) = response.delay {
        tokio::time::sleep(delay).await;
    }
    response.to_http()
}

fn plain(status: StatusCode, message: String) -> http::Response<Body> {
    let mut response = http::Response::new(Body::from(message));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::TlsConnector;

    use super::*;

    /// A parsed HTTP/1.1 response.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        head: String,
        body: String,
    }

    /// Sends one HTTP/1.1 request over TLS, verifying the receiver against `ca`.
    async fn send(
        ca: &TestCa,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<Answer> {
        let mut config = (*ca.client_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1")?, tcp)
            .await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await?;
        let response = String::from_utf8(response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("no end of headers")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .context("no status")?
            .parse()?;
        Ok(Answer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        })
    }

    async fn post(ca: &TestCa, receiver: &Receiver, path: &str) -> anyhow::Result<u16> {
        Ok(send(ca, receiver.addr(), "POST", path, &[], "{}")
            .await?
            .status)
    }

    #[tokio::test]
    async fn records_a_post_over_verified_tls() -> anyhow::Result<()> {
        let ca = TestCa::new();
        let receiver = Receiver::start(&ca).await?;
        assert_eq!(
            receiver.url("/hooks"),
            format!("https://127.0.0.1:{}/hooks", receiver.addr().port())
        );
        let before = SystemTime::now();

        let answer = send(
            &ca,
            receiver.addr(),
            "POST",
            "/hooks/orders?tenant=t1",
            &[
                ("content-type", "application/json"),
                ("webhook-id", "evt_1"),
            ],
            r#"{"type":"order.created","data":{"id":42}}"#,
        )
        .await?;

        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "");
        let [request] = &receiver
            .wait_for_requests(1, Duration::from_secs(5))
            .await?[..]
        else {
            panic!("expected exactly one request: {:?}", receiver.requests());
        };
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hooks/orders?tenant=t1");
        assert_eq!(request.header("Webhook-Id"), Some("evt_1"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("missing"), None);
        assert_eq!(request.json()["data"]["id"], 42);
        assert!(request.received_at >= before);
        assert_eq!(receiver.request_count(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn serves_the_script_in_order_then_the_default() -> anyhow::Result<()> {
        let ca = TestCa::new();
        let receiver = Receiver::start(&ca).await?;
        receiver.script([500, 200]);
        receiver.respond_with_response(Response::new(503).header("retry-after", "7").body("busy"));

        assert_eq!(post(&ca, &receiver, "/a").await?, 500);
        assert_eq!(post(&ca, &receiver, "/b").await?, 200);
        let default = send(&ca, receiver.addr(), "POST", "/c", &[], "{}").await?;
        assert_eq!(default.status, 503);
        assert!(
            default.head.to_ascii_lowercase().contains("retry-after: 7"),
            "{default:?}"
        );
        assert_eq!(default.body, "busy");

        receiver.respond_with(410);
        assert_eq!(post(&ca, &receiver, "/d").await?, 410);
        let paths: Vec<_> = receiver.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
        Ok(())
    }

    #[tokio::test]
    async fn an_invalid_response_becomes_an_explained_500() -> anyhow::Result<()> {
        let ca = TestCa::new();
        let receiver = Receiver::start(&ca).await?;
        receiver.script([Response::new(200).header("bad header", "x")]);
        let answer = send(&ca, receiver.addr(), "GET", "/", &[], "").await?;
        assert_eq!(answer.status, 500);
        assert!(
            answer.body.contains("invalid scripted response"),
            "{answer:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn wait_for_requests_wakes_on_arrival_and_times_out_clearly() -> anyhow::Result<()> {
        let ca = TestCa::new();
        let receiver = Receiver::start(&ca).await?;
        let (waited, sent) = tokio::join!(
            receiver.wait_for_requests(1, Duration::from_secs(5)),
            post(&ca, &receiver, "/late"),
        );
        assert_eq!(sent?, 200);
        assert_eq!(waited?.len(), 1);

        let error = receiver
            .wait_for_requests(2, Duration::from_millis(100))
            .await
            .expect_err("only one request was sent");
        let message = error.to_string();
        assert!(
            message.contains("expected 2 requests within 100ms, 1 arrived"),
            "{message}"
        );
        assert!(message.contains("POST /late"), "{message}");
        Ok(())
    }

    #[tokio::test]
    async fn a_hanging_response_is_recorded_and_cut_off_by_drop() -> anyhow::Result<()> {
        let ca = TestCa::new();
        let receiver = Receiver::start(&ca).await?;
        receiver.respond_with_response(Response::new(200).delay(Duration::from_secs(3600)));

        let sending = send(&ca, receiver.addr(), "POST", "/slow", &[], "{}");
        tokio::pin!(sending);
        tokio::select! {
            answer = &mut sending => panic!("a hanging receiver answered: {answer:?}"),
            arrived = receiver.wait_for_requests(1, Duration::from_secs(5)) => {
                assert_eq!(arrived?[0].path, "/slow");
            }
        }

        drop(receiver);
        let ended = tokio::time::timeout(Duration::from_secs(5), sending)
            .await
            .context("dropping the receiver left the connection open")?;
        assert!(ended.is_err(), "got an answer after drop: {ended:?}");
        Ok(())
    }
}
