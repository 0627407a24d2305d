//! gRPC end to end: a small service written the way tonic's generated code is (no protoc,
//! no build script), served on 127.0.0.1:0 as plaintext h2c or as TLS with ALPN `h2`, and a
//! client that speaks HTTP/2 over a connection the test makes (TLS to the gateway, or plain
//! TCP straight to an h2c origin).
//!
//! Service `portcullis.test.Echo`:
//! - `Echo` (unary) answers the message, with trailer `x-echo-count` (Echo calls so far);
//! - `Count` (server streaming) answers `1..=n`; with `fail_at` set, it stops after that
//!   many replies with `NOT_FOUND` in the trailers;
//! - `Sum` (client streaming) answers the total and count of a stream;
//! - `RunningSum` (bidirectional) answers the running total after each message;
//! - `Fail` (unary) answers `NOT_FOUND` with metadata `x-fail-reason: test`.
//!
//! [`frame`] and [`unframe`] read and write the wire format, for tests that look at the
//! HTTP/2 messages themselves rather than trust a gRPC library's leniency.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, future, stream};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2 as client_h2;
use hyper::server::conn::http2 as server_h2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tonic::codec::Streaming;
use tonic::metadata::{GRPC_CONTENT_TYPE, MetadataMap};
use tonic::server::{
    ClientStreamingService, NamedService, ServerStreamingService, StreamingService, UnaryService,
};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;
use tower_service::Service;

use crate::ca::Leaf;
use crate::client::TestClient;

/// The service's full name, as in `/<name>/<method>` paths.
pub const SERVICE: &str = "portcullis.test.Echo";

/// `Echo` and `Fail` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Text to echo.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `Echo` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The request's text.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// `Count` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    /// How many replies.
    #[prost(uint32, tag = "1")]
    pub n: u32,
    /// When non-zero, end with `NOT_FOUND` after this many replies.
    #[prost(uint32, tag = "2")]
    pub fail_at: u32,
}

/// One `Count` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountReply {
    /// 1, 2, … n.
    #[prost(uint32, tag = "1")]
    pub i: u32,
}

/// One number for `Sum` and `RunningSum`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SumRequest {
    /// The number.
    #[prost(int64, tag = "1")]
    pub value: i64,
}

/// `Sum` reply, and each `RunningSum` reply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SumReply {
    /// Total so far.
    #[prost(int64, tag = "1")]
    pub total: i64,
    /// Numbers received so far.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// One request as a gRPC origin saw it.
#[derive(Debug, Clone)]
pub struct GrpcSeen {
    /// HTTP version on the origin connection (always HTTP/2 for a gRPC server).
    pub version: Version,
    /// `/<service>/<method>`.
    pub path: String,
    /// Headers as received.
    pub headers: HeaderMap,
}

#[derive(Default)]
struct State {
    connections: AtomicUsize,
    echoes: AtomicUsize,
    seen: Mutex<Vec<GrpcSeen>>,
}

/// The `portcullis.test.Echo` service, routing by path like tonic's generated servers.
#[derive(Clone)]
pub struct EchoServer {
    state: Arc<State>,
}

impl NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.state.seen.lock().unwrap().push(GrpcSeen {
            version: req.version(),
            path: req.uri().path().to_owned(),
            headers: req.headers().clone(),
        });
        let state = self.state.clone();
        let method = req
            .uri()
            .path()
            .strip_prefix(&format!("/{SERVICE}/"))
            .unwrap_or_default()
            .to_owned();
        Box::pin(async move {
            let resp = match method.as_str() {
                // Unary on the wire; served as a one-reply stream because only a stream's
                // final status can carry custom trailers in tonic.
                "Echo" => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .server_streaming(EchoMethod(state), req)
                        .await
                }
                "Count" => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .server_streaming(CountMethod, req)
                        .await
                }
                "Sum" => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .client_streaming(SumMethod, req)
                        .await
                }
                "RunningSum" => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .streaming(RunningSumMethod, req)
                        .await
                }
                "Fail" => {
                    tonic::server::Grpc::new(ProstCodec::default())
                        .unary(FailMethod, req)
                        .await
                }
                _ => {
                    let mut resp = http::Response::new(tonic::body::Body::empty());
                    let headers = resp.headers_mut();
                    headers.insert(
                        Status::GRPC_STATUS,
                        HeaderValue::from(Code::Unimplemented as i32),
                    );
                    headers.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
                    resp
                }
            };
            Ok(resp)
        })
    }
}

struct EchoMethod(Arc<State>);

impl ServerStreamingService<EchoRequest> for EchoMethod {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        let count = self.0.echoes.fetch_add(1, Ordering::SeqCst) + 1;
        let message = req.into_inner().message;
        Box::pin(async move {
            let mut trailers = MetadataMap::new();
            trailers.insert("x-echo-count", count.into());
            // A final status with code OK ends the stream normally, and its metadata goes
            // out in the trailers next to `grpc-status: 0`.
            let end = Status::with_metadata(Code::Ok, "", trailers);
            let replies = stream::iter([Ok(EchoReply { message }), Err(end)]);
            Ok(Response::new(Box::pin(replies) as BoxStream<EchoReply>))
        })
    }
}

struct CountMethod;

impl ServerStreamingService<CountRequest> for CountMethod {
    type Response = CountReply;
    type ResponseStream = BoxStream<CountReply>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: Request<CountRequest>) -> Self::Future {
        let CountRequest { n, fail_at } = req.into_inner();
        Box::pin(async move {
            let mut replies: Vec<Result<CountReply, Status>> = Vec::new();
            for i in 1..=n {
                if fail_at != 0 && i > fail_at {
                    replies.push(Err(Status::not_found(format!(
                        "count stopped after {fail_at}"
                    ))));
                    break;
                }
                replies.push(Ok(CountReply { i }));
            }
            Ok(Response::new(
                Box::pin(stream::iter(replies)) as BoxStream<CountReply>
            ))
        })
    }
}

struct SumMethod;

impl ClientStreamingService<SumRequest> for SumMethod {
    type Response = SumReply;
    type Future = BoxFuture<Result<Response<SumReply>, Status>>;

    fn call(&mut self, req: Request<Streaming<SumRequest>>) -> Self::Future {
        let mut numbers = req.into_inner();
        Box::pin(async move {
            let mut reply = SumReply::default();
            while let Some(n) = numbers.message().await? {
                reply.total += n.value;
                reply.count += 1;
            }
            Ok(Response::new(reply))
        })
    }
}

struct RunningSumMethod;

impl StreamingService<SumRequest> for RunningSumMethod {
    type Response = SumReply;
    type ResponseStream = BoxStream<SumReply>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: Request<Streaming<SumRequest>>) -> Self::Future {
        let numbers = req.into_inner();
        Box::pin(async move {
            let totals = numbers.scan(SumReply::default(), |acc, n| {
                future::ready(Some(n.map(|n| {
                    acc.total += n.value;
                    acc.count += 1;
                    acc.clone()
                })))
            });
            Ok(Response::new(Box::pin(totals) as BoxStream<SumReply>))
        })
    }
}

struct FailMethod;

impl UnaryService<EchoRequest> for FailMethod {
    type Response = EchoReply;
    type Future = BoxFuture<Result<Response<EchoReply>, Status>>;

    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        let message = req.into_inner().message;
        Box::pin(async move {
            let mut metadata = MetadataMap::new();
            metadata.insert("x-fail-reason", "test".parse().expect("ASCII"));
            Err(Status::with_metadata(
                Code::NotFound,
                format!("no such thing: {message}"),
                metadata,
            ))
        })
    }
}

/// A gRPC server on 127.0.0.1:0 speaking HTTP/2 only, like tonic's own server; it stops,
/// connections and all, when dropped.
pub struct GrpcOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for GrpcOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcOrigin {
    /// Plaintext HTTP/2 with prior knowledge (h2c); an HTTP/1.1 request is a protocol
    /// error to it.
    pub async fn h2c() -> Self {
        Self::start(None).await
    }

    /// TLS with `leaf`, offering only ALPN `h2`.
    pub async fn tls(leaf: &Leaf) -> Self {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert_der.clone()], leaf.key_der.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self::start(Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start(tls: Option<TlsAcceptor>) -> Self {
        crate::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept_loop(listener, tls, state.clone()));
        Self { addr, state, task }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<GrpcSeen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The most recent request.
    pub fn last(&self) -> GrpcSeen {
        self.seen()
            .pop()
            .expect("the gRPC origin has received no request")
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<State>) {
    // Connections live in the set, so aborting this task ends them too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let server = EchoServer { state: state.clone() };
                let tls = tls.clone();
                conns.spawn(async move {
                    match tls {
                        None => serve_h2(tcp, server).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve_h2(stream, server).await;
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_h2<IO>(io: IO, server: EchoServer)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: http::Request<Incoming>| {
        let mut server = server.clone();
        async move { server.call(req).await }
    });
    let _ = server_h2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// One HTTP/2 connection as the tower service tonic's client drives.
#[derive(Clone)]
pub struct H2Channel(client_h2::SendRequest<tonic::body::Body>);

impl Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Result<Self::Response, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A client for `portcullis.test.Echo` over one HTTP/2 connection, in the shape of a
/// tonic-generated client.
pub struct GrpcClient {
    grpc: tonic::client::Grpc<H2Channel>,
    /// ALPN protocol the TLS handshake chose (`None` over plaintext).
    pub alpn: Option<Vec<u8>>,
}

fn method_path(method: &str) -> PathAndQuery {
    PathAndQuery::try_from(format!("/{SERVICE}/{method}")).expect("service paths are valid")
}

impl GrpcClient {
    /// TLS to the gateway behind `client` with SNI `host` and ALPN `h2`; calls go to
    /// `https://<host>/…`.
    pub async fn connect(client: &TestClient, host: &str) -> std::io::Result<Self> {
        let tls = client.tls(host, true, &["h2"]).await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut me = Self::over(tls, &format!("https://{host}")).await?;
        me.alpn = alpn;
        Ok(me)
    }

    /// Plaintext HTTP/2 straight to an h2c origin (to check the harness without the
    /// gateway).
    pub async fn h2c(addr: SocketAddr) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        Self::over(tcp, &format!("http://{addr}")).await
    }

    /// HTTP/2 over `io`; requests carry `origin`'s scheme and authority.
    pub async fn over<IO>(io: IO, origin: &str) -> std::io::Result<Self>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let origin: Uri = origin.parse().map_err(std::io::Error::other)?;
        let (sender, conn) = client_h2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Self {
            grpc: tonic::client::Grpc::with_origin(H2Channel(sender), origin),
            alpn: None,
        })
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))
    }

    /// `Echo`: the reply's metadata holds the response headers and trailers.
    pub async fn echo(&mut self, message: &str) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let req = Request::new(EchoRequest {
            message: message.to_owned(),
        });
        self.grpc
            .unary(req, method_path("Echo"), ProstCodec::default())
            .await
    }

    /// `Count`: `n` replies, or `fail_at` replies and then `NOT_FOUND` when it is non-zero.
    pub async fn count(
        &mut self,
        n: u32,
        fail_at: u32,
    ) -> Result<Response<Streaming<CountReply>>, Status> {
        self.ready().await?;
        let req = Request::new(CountRequest { n, fail_at });
        self.grpc
            .server_streaming(req, method_path("Count"), ProstCodec::default())
            .await
    }

    /// `Sum` of `values`, sent as a stream of messages.
    pub async fn sum(
        &mut self,
        values: impl IntoIterator<Item = i64>,
    ) -> Result<Response<SumReply>, Status> {
        self.ready().await?;
        let values: Vec<SumRequest> = values
            .into_iter()
            .map(|value| SumRequest { value })
            .collect();
        let req = Request::new(stream::iter(values));
        self.grpc
            .client_streaming(req, method_path("Sum"), ProstCodec::default())
            .await
    }

    /// `RunningSum` over `numbers`; replies arrive while the request is still open.
    pub async fn running_sum(
        &mut self,
        numbers: impl Stream<Item = SumRequest> + Send + 'static,
    ) -> Result<Response<Streaming<SumReply>>, Status> {
        self.ready().await?;
        self.grpc
            .streaming(
                Request::new(numbers),
                method_path("RunningSum"),
                ProstCodec::default(),
            )
            .await
    }

    /// `Fail`: always `NOT_FOUND`.
    pub async fn fail(&mut self, message: &str) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let req = Request::new(EchoRequest {
            message: message.to_owned(),
        });
        self.grpc
            .unary(req, method_path("Fail"), ProstCodec::default())
            .await
    }

    /// A method the service does not have (`UNIMPLEMENTED`).
    pub async fn missing(&mut self) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let req = Request::new(EchoRequest::default());
        self.grpc
            .unary(req, method_path("Missing"), ProstCodec::default())
            .await
    }
}

/// `message` as one gRPC length-prefixed message (uncompressed).
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("test messages are small"));
    message.encode(&mut buf).expect("the buffer has room");
    buf.freeze()
}

/// The messages in a gRPC body; panics on a malformed or compressed one.
pub fn unframe<M: prost::Message + Default>(mut body: &[u8]) -> Vec<M> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "truncated gRPC message header: {body:?}");
        assert_eq!(body[0], 0, "compressed or invalid gRPC message: {body:?}");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "truncated gRPC message: {body:?}");
        out.push(M::decode(&body[5..5 + len]).expect("a valid protobuf message"));
        body = &body[5 + len..];
    }
    out
}
