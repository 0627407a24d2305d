//! gRPC through the gateway: HTTP/2 end to end with trailers, for unary, server-streaming,
//! client-streaming and bidirectional calls, error statuses (trailers-only and after data),
//! to TLS origins in `strict` and `full` mode and to a plaintext origin with `h2c: true`.
//! Without `h2c`, a plaintext origin gets HTTP/1.1, which a gRPC server cannot answer: the
//! call must fail quickly instead of hanging.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Version};
use http_body_util::BodyExt;
use portcullis_tests::grpc::{
    CountReply, EchoReply, EchoRequest, GrpcClient, GrpcOrigin, SERVICE, SumRequest, frame, unframe,
};
use portcullis_tests::{GatewayBuilder, TestCa, TestGateway, bytes, within};
use tokio::sync::mpsc;
use tonic::Code;

/// How the gateway reaches the gRPC origin.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// TLS, verified against the origin's CA given with `ca:`.
    Strict,
    /// TLS, unverified (the origin's CA is unknown to the gateway).
    Full,
    /// Plaintext HTTP/2 with prior knowledge.
    H2c,
    /// Plaintext without `h2c`: HTTP/1.1 to an origin that only speaks HTTP/2.
    PlainH1,
}

/// A gateway with one site, `grpc.test`, in front of a gRPC origin reached in `mode`.
struct Setup {
    gw: TestGateway,
    origin: GrpcOrigin,
    edge: TestCa,
}

impl Setup {
    async fn new(mode: Mode) -> Self {
        let edge = TestCa::new("edge CA");
        let b = GatewayBuilder::new();
        let (origin, origin_yaml) = match mode {
            Mode::Strict => {
                let origin_ca = TestCa::new("origin CA");
                let origin = GrpcOrigin::tls(&origin_ca.leaf(&["127.0.0.1"])).await;
                let ca = origin_ca.write_root(b.dir(), "origin-ca");
                let yaml = format!(
                    "{{url: 'https://{}', mode: strict, ca: {}}}",
                    origin.addr,
                    ca.display()
                );
                (origin, yaml)
            }
            Mode::Full => {
                let stranger = TestCa::new("untrusted origin CA");
                let origin = GrpcOrigin::tls(&stranger.leaf(&["origin.elsewhere"])).await;
                let yaml = format!("{{url: 'https://{}', mode: full}}", origin.addr);
                (origin, yaml)
            }
            Mode::H2c => {
                let origin = GrpcOrigin::h2c().await;
                let yaml = format!("{{url: 'http://{}', h2c: true}}", origin.addr);
                (origin, yaml)
            }
            Mode::PlainH1 => {
                let origin = GrpcOrigin::h2c().await;
                let yaml = format!("'http://{}'", origin.addr);
                (origin, yaml)
            }
        };
        let gw = b
            .tls_site(&edge, &["grpc.test"], &format!("origin: {origin_yaml}"))
            .start()
            .await;
        Self { gw, origin, edge }
    }

    /// A gRPC client on a new TLS connection to the gateway (ALPN h2, SNI `grpc.test`).
    async fn client(&self) -> GrpcClient {
        let client = within(
            "TLS to the gateway",
            GrpcClient::connect(&self.gw.client(&self.edge.root_der), "grpc.test"),
        )
        .await
        .unwrap();
        assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
        client
    }
}

fn text<'a>(metadata: &'a tonic::metadata::MetadataMap, key: &str) -> Option<&'a str> {
    metadata.get(key).map(|v| v.to_str().unwrap())
}

async fn unary(mode: Mode) {
    let s = Setup::new(mode).await;
    let mut client = s.client().await;

    let first = within("Echo", client.echo("hello")).await.unwrap();
    assert_eq!(
        text(first.metadata(), "content-type"),
        Some("application/grpc")
    );
    // `x-echo-count` and `grpc-status` travel in the trailers; tonic merges them in.
    assert_eq!(text(first.metadata(), "x-echo-count"), Some("1"));
    assert_eq!(text(first.metadata(), "grpc-status"), Some("0"));
    assert_eq!(first.into_inner().message, "hello");

    // A second call on the same client connection.
    let second = within("second Echo", client.echo("again")).await.unwrap();
    assert_eq!(text(second.metadata(), "x-echo-count"), Some("2"));
    assert_eq!(second.into_inner().message, "again");

    // The origin got real gRPC: HTTP/2, with the headers gRPC servers insist on.
    let seen = s.origin.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.path, format!("/{SERVICE}/Echo"));
    assert_eq!(seen.headers["content-type"], "application/grpc");
    assert_eq!(seen.headers["te"], "trailers");
    assert_eq!(s.origin.seen().len(), 2);
}

async fn server_streaming(mode: Mode) {
    let s = Setup::new(mode).await;
    let mut client = s.client().await;

    let resp = within("Count", client.count(200, 0)).await.unwrap();
    let mut replies = resp.into_inner();
    let mut got = Vec::new();
    while let Some(reply) = within("next Count reply", replies.message()).await.unwrap() {
        got.push(reply.i);
    }
    assert_eq!(got, (1..=200).collect::<Vec<_>>());
    let trailers = within("Count trailers", replies.trailers())
        .await
        .unwrap()
        .expect("the stream ended with trailers");
    assert_eq!(text(&trailers, "grpc-status"), Some("0"));
}

async fn client_streaming_and_bidi(mode: Mode) {
    let s = Setup::new(mode).await;
    let mut client = s.client().await;

    let sum = within("Sum", client.sum(1..=100)).await.unwrap();
    assert_eq!(text(sum.metadata(), "grpc-status"), Some("0"));
    let sum = sum.into_inner();
    assert_eq!((sum.total, sum.count), (5050, 100));

    // Lockstep: each number is sent only after the previous total came back, so this
    // only finishes if the gateway passes frames on as they come, both ways, while the
    // request is still open.
    let (tx, rx) = mpsc::unbounded_channel();
    let numbers = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|value| (SumRequest { value }, rx))
    });
    // The response headers come back before the first number is sent: the gateway must
    // not wait for the request body to start the response.
    let resp = within("RunningSum headers", client.running_sum(numbers))
        .await
        .unwrap();
    let mut totals = resp.into_inner();
    let mut expected = 0;
    for value in 1..=10 {
        tx.send(value).unwrap();
        expected += value;
        let reply = within("RunningSum reply", totals.message())
            .await
            .unwrap()
            .expect("a reply for each number");
        assert_eq!(reply.total, expected);
        assert_eq!(i64::from(reply.count), value);
    }
    drop(tx);
    assert_eq!(
        within("RunningSum end", totals.message()).await.unwrap(),
        None
    );
    let trailers = within("RunningSum trailers", totals.trailers())
        .await
        .unwrap()
        .expect("the stream ended with trailers");
    assert_eq!(text(&trailers, "grpc-status"), Some("0"));
}

async fn error_statuses(mode: Mode) {
    let s = Setup::new(mode).await;
    let mut client = s.client().await;

    // Trailers-only: the status comes in the response headers, with no body.
    let status = within("Fail", client.fail("thing")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such thing: thing");
    assert_eq!(text(status.metadata(), "x-fail-reason"), Some("test"));

    // After data: two replies, then the status in the trailers.
    let mut replies = within("Count failing", client.count(5, 2))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let status = loop {
        match within("next Count reply", replies.message()).await {
            Ok(Some(CountReply { i })) => got.push(i),
            Ok(None) => panic!("the stream ended without its error; got {got:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, [1, 2]);
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "count stopped after 2");

    let status = within("Missing", client.missing()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The connection is still good after errors.
    let ok = within("Echo after errors", client.echo("still here"))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().message, "still here");
}

/// The HTTP/2 response as it arrives at the client, frame by frame.
struct RawResponse {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
}

/// One unary Echo call made by hand, so the trailers are looked at as HTTP/2 frames and not
/// through tonic, which treats a 200 without trailers as success.
async fn raw_echo(s: &Setup, message: &str) -> RawResponse {
    let mut conn = within(
        "raw h2 connection",
        s.gw.client(&s.edge.root_der).connect("grpc.test", &["h2"]),
    )
    .await
    .unwrap();
    assert!(conn.is_h2());
    let req = conn
        .request("grpc.test", &format!("/{SERVICE}/Echo"))
        .method(Method::POST)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(bytes(frame(&EchoRequest {
            message: message.to_owned(),
        })))
        .unwrap();
    let resp = within("raw Echo", conn.send(req)).await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(f) = within("raw Echo body", body.frame()).await {
        let f = f.unwrap();
        match f.into_data() {
            Ok(d) => {
                assert!(trailers.is_none(), "data after trailers");
                data.extend_from_slice(&d);
            }
            Err(f) => trailers = Some(f.into_trailers().unwrap()),
        }
    }
    RawResponse {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        data,
        trailers,
    }
}

async fn trailers_on_the_wire(mode: Mode) {
    let s = Setup::new(mode).await;
    let resp = raw_echo(&s, "wire").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.version, Version::HTTP_2);
    assert_eq!(resp.headers["content-type"], "application/grpc");
    assert!(
        !resp.headers.contains_key("grpc-status"),
        "a reply with a message is not trailers-only: {:?}",
        resp.headers
    );
    let replies: Vec<EchoReply> = unframe(&resp.data);
    assert_eq!(
        replies,
        [EchoReply {
            message: "wire".into()
        }]
    );
    let trailers = resp.trailers.expect("the response ended with trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo-count"], "1");
}

/// One test per mode and kind of call, so a failure names both.
macro_rules! suite {
    ($name:ident, $mode:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn unary_with_trailer_metadata() {
                unary($mode).await;
            }

            #[tokio::test]
            async fn server_streaming_200_replies() {
                server_streaming($mode).await;
            }

            #[tokio::test]
            async fn client_streaming_and_bidi_in_lockstep() {
                client_streaming_and_bidi($mode).await;
            }

            #[tokio::test]
            async fn error_statuses_trailers_only_and_after_data() {
                error_statuses($mode).await;
            }

            #[tokio::test]
            async fn trailers_arrive_as_http2_trailers() {
                trailers_on_the_wire($mode).await;
            }
        }
    };
}

suite!(strict, Mode::Strict);
suite!(full, Mode::Full);
suite!(h2c, Mode::H2c);

/// The harness itself, without the gateway: if this fails, the suites above say nothing
/// about the gateway.
#[tokio::test]
async fn harness_speaks_grpc_to_both_origin_flavours() {
    let plain = GrpcOrigin::h2c().await;
    let mut direct = GrpcClient::h2c(plain.addr).await.unwrap();
    let reply = within("direct h2c Echo", direct.echo("direct"))
        .await
        .unwrap();
    assert_eq!(text(reply.metadata(), "x-echo-count"), Some("1"));

    let ca = TestCa::new("origin CA");
    let tls = GrpcOrigin::tls(&ca.leaf(&["127.0.0.1"])).await;
    let client = portcullis_tests::TestClient::new(tls.addr, &ca.root_der);
    let mut direct = GrpcClient::connect(&client, "127.0.0.1").await.unwrap();
    assert_eq!(direct.alpn.as_deref(), Some(&b"h2"[..]));
    let reply = within("direct TLS Echo", direct.echo("direct"))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "direct");
}

/// Without `h2c` a plaintext origin is spoken to in HTTP/1.1, which an HTTP/2-only gRPC
/// server rejects at its connection preface: the gateway answers 502 at once, and a gRPC
/// client gets an error status rather than waiting.
#[tokio::test]
async fn plaintext_origin_without_h2c_fails_fast_with_unavailable() {
    let s = Setup::new(Mode::PlainH1).await;

    let start = Instant::now();
    // A gateway error reaches a gRPC client as a trailers-only gRPC response, as Envoy
    // sends it: HTTP 200 with `grpc-status: 14` (UNAVAILABLE), not a text page.
    let resp = raw_echo(&s, "h1").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers["grpc-status"], "14");
    assert!(resp.data.is_empty(), "{:?}", Bytes::from(resp.data));

    let mut client = s.client().await;
    let status = within("Echo to an h1 origin", client.echo("h1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("502 Bad Gateway"), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    // The origin never saw a request it could parse.
    assert!(s.origin.seen().is_empty());
    assert!(s.origin.connections() >= 1);
}
