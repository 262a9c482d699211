//! An async PSK echo server and a few clients in one program, on tokio, over real UDP on
//! loopback.
//!
//! ```text
//! cargo run --example async_echo --features tokio      # RUST_LOG=debug shows the handshakes
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use openssl_dtls::tokio::{DtlsClient, DtlsServer};
use openssl_dtls::{DtlsClientContext, DtlsServerContext, PskCredentials};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";

const USAGE: &str = "\
usage: async_echo
An async PSK echo server and three clients in one program, on tokio, over UDP on loopback.
RUST_LOG=debug shows the handshakes.
  -h, --help  this text";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::parse_args(USAGE, common::only_help(USAGE));
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    // The server: one socket, one driver task; a task per connection echoes what it receives.
    let server_ctx = DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .build()?;
    let server = DtlsServer::bind("127.0.0.1:0", server_ctx).await?;
    let addr = server.local_addr();
    println!("server: listening on {addr}");
    server.on_handshake_failure(|failure| eprintln!("handshake failed: {failure}"));
    let mut incoming = server.incoming();
    let acceptor = tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            let Ok(conn) = conn else { continue };
            println!(
                "server: {} connected, {} {}",
                conn.peer_addr(),
                conn.protocol_version().unwrap_or("?"),
                conn.cipher().unwrap_or("?")
            );
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                // Ok(0) is end of stream: the client closed the connection.
                while let Ok(n @ 1..) = conn.recv(&mut buf).await {
                    if conn.send(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                println!("server: {} closed", conn.peer_addr());
            });
        }
    });

    // Three clients, concurrently, each on its own socket.
    let client_ctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY, KEY))
        .build()?;
    let mut clients = Vec::new();
    for i in 0..3 {
        let ctx = client_ctx.clone();
        clients.push(tokio::spawn(async move {
            let client = DtlsClient::bind("127.0.0.1:0").await?;
            let conn = client.connect(addr, &ctx, Duration::from_secs(5)).await?;
            let mut buf = [0u8; 1500];
            for j in 0..3 {
                let msg = format!("client {i} says hello #{j}");
                conn.send(msg.as_bytes()).await?;
                let n = conn.recv(&mut buf).await?;
                println!("client {i}: echo {:?}", String::from_utf8_lossy(&buf[..n]));
            }
            conn.close().await;
            Ok::<(), openssl_dtls::Error>(())
        }));
    }
    for c in clients {
        c.await??;
    }

    tokio::time::sleep(Duration::from_millis(100)).await; // let the server log the closes
    let stats = server.stats();
    println!(
        "server: {} handshakes completed, {} HelloVerifyRequests, {} datagrams in, {} out",
        stats.handshakes_completed,
        stats.hello_verify_requests,
        stats.datagrams_in,
        stats.datagrams_out
    );
    server.close().await;
    acceptor.await?;
    Ok(())
}
