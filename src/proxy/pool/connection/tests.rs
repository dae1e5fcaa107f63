use std::future::poll_fn;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::testing::Upstream;
use super::*;

/// How long a test waits for the peer before failing.
const LIMIT: Duration = Duration::from_secs(5);

/// Both ends of a loopback TCP connection.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (ours, theirs) = tokio::join!(TcpStream::connect(address), listener.accept());
    (ours.expect("connected"), theirs.expect("accepted").0)
}

fn counted(stream: Stream) -> (CountingStream, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let counted = CountingStream {
        stream,
        received: Arc::clone(&received),
    };
    (counted, received)
}

/// A TLS connection over loopback to a `localhost` certificate made here: the
/// proxy's end and the peer's.
async fn tls_pair() -> (
    TlsStream<TcpStream>,
    tokio_rustls::server::TlsStream<TcpStream>,
) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let certificate = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)
        .expect("server configuration");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (ours, theirs) = tcp_pair().await;
    let name = ServerName::try_from("localhost").expect("name");
    let (ours, theirs) = tokio::join!(
        TlsConnector::from(Arc::new(client)).connect(name, ours),
        TlsAcceptor::from(Arc::new(server)).accept(theirs)
    );
    (
        ours.expect("client handshake"),
        theirs.expect("server handshake"),
    )
}

#[tokio::test]
async fn counted_adds_only_the_bytes_each_read_brings() {
    let (ours, mut peer) = tcp_pair().await;
    let (mut counted, received) = counted(Stream::Plain(ours));
    peer.write_all(b"hello").await.expect("written");
    let mut storage = [0u8; 64];
    let mut buf = ReadBuf::new(&mut storage);
    buf.put_slice(b"abc"); // what the reader already held
    while buf.filled().len() < 8 {
        let before = buf.filled().len();
        poll_fn(|cx| Pin::new(&mut counted).poll_read(cx, &mut buf))
            .await
            .expect("read");
        assert!(buf.filled().len() > before, "the stream ended early");
    }
    assert_eq!(&buf.filled()[3..], b"hello");
    assert_eq!(received.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn shutting_counted_down_ends_the_stream_for_the_peer() {
    let (ours, mut peer) = tcp_pair().await;
    let (mut counted, _) = counted(Stream::Plain(ours));
    counted.shutdown().await.expect("shut down");
    // `counted` is still open: only the shutdown can have ended the peer's stream.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(LIMIT, peer.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    drop(counted);
}

#[tokio::test]
async fn flushing_counted_waits_for_what_tls_still_holds() {
    let (ours, mut peer) = tls_pair().await;
    let (mut counted, _) = counted(Stream::Tls(Box::new(ours)));
    // The peer reads nothing yet: write until the socket and TLS's own buffer are
    // full (loopback buffers hold a few MiB).
    let chunk = [7u8; 64 * 1024];
    let mut written = 0usize;
    loop {
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut counted).poll_write(cx, &chunk))).await;
        match polled {
            Poll::Ready(result) => written += result.expect("written"),
            Poll::Pending => break,
        }
        assert!(written < 256 << 20, "the socket never pushed back");
    }
    let flushed = poll_fn(|cx| Poll::Ready(Pin::new(&mut counted).poll_flush(cx))).await;
    assert!(
        flushed.is_pending(),
        "flushed with TLS records still unsent"
    );
    // Once the peer reads, the flush completes and everything arrives.
    let reading = tokio::spawn(async move {
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.map(|_| all.len())
    });
    tokio::time::timeout(LIMIT, counted.flush())
        .await
        .expect("flushed in time")
        .expect("flushed");
    counted.shutdown().await.expect("shut down");
    let read = tokio::time::timeout(LIMIT, reading).await;
    assert_eq!(
        read.expect("in time").expect("joined").expect("read"),
        written
    );
}

#[tokio::test]
async fn a_closed_http2_connection_says_so() {
    let upstream = Upstream::start().await;
    let mut pipe = upstream.http2().await;
    assert!(!pipe.connection.is_closed());
    pipe.close();
    assert!(pipe.connection.is_closed());
}
