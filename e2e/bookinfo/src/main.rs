//! `bookinfo`: one binary standing in for every Istio Bookinfo image on the
//! local cluster (productpage, details, ratings, reviews v1/v2/v3), and for
//! Istio's tcp-echo sample, one subcommand per role; and `flaky`, a server
//! that fails its first requests on purpose, for retry tests. The Bookinfo roles
//! serve HTTP on 0.0.0.0:PORT and log one line per request to stderr;
//! tcp-echo serves plain TCP on the ports it is given and logs one line per
//! connection. All stop gracefully on SIGTERM or Ctrl-C.

mod details;
mod flaky;
mod productpage;
mod ratings;
mod reviews;
mod tcp_echo;
#[cfg(test)]
mod tests;
mod upstream;

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::Context;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Stand-ins for Istio's Bookinfo services")]
struct Cli {
    /// Port to listen on (all addresses).
    #[arg(long, env = "PORT", default_value_t = 9080, global = true)]
    port: u16,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// The web page; calls details and reviews.
    Productpage,
    /// Book details.
    Details,
    /// Star ratings.
    Ratings,
    /// Book reviews; v2 and v3 call ratings.
    Reviews {
        #[arg(long, env = "REVIEWS_VERSION", value_enum)]
        version: reviews::Version,
    },
    /// Fails the first N requests per key with 503 and counts them (for
    /// retry tests; no Bookinfo image does this).
    Flaky,
    /// Istio's tcp-echo-server: each line back with a prefix (plain TCP).
    TcpEcho {
        /// Ports to listen on, comma-separated, as the sample's first argument.
        #[arg(default_value = "9000")]
        ports: String,
        /// What goes before each line echoed, as the sample's second argument.
        #[arg(default_value = "hello")]
        prefix: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let (name, router) = match cli.role {
        Role::TcpEcho { ports, prefix } => {
            tcp_echo::serve(&tcp_echo::parse_ports(&ports)?, &prefix, shutdown_signal()).await?;
            tracing::info!("tcp-echo stopped");
            return Ok(());
        }
        Role::Productpage => ("productpage", productpage::router(productpage::Config::from_env()?)),
        Role::Details => ("details", details::router()),
        Role::Ratings => ("ratings", ratings::router()),
        Role::Flaky => ("flaky", flaky::router()),
        Role::Reviews { version } => ("reviews", reviews::router(reviews::Config::from_env(version)?)),
    };
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, cli.port));
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!("{name} listening on {addr}");
    axum::serve(listener, router.layer(middleware::from_fn(access_log)))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("{name} stopped");
    Ok(())
}

/// One log line per request: method, path, status, duration, and the
/// caller's identity as the sidecar vouches for it (the `URI=` of the
/// `x-forwarded-client-cert` header it sets from a verified peer
/// certificate; `-` for plaintext).
async fn access_log(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let peer = request
        .headers()
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').find_map(|part| part.strip_prefix("URI=")))
        .unwrap_or("-")
        .to_string();
    let response = next.run(request).await;
    tracing::info!(
        "{method} {path} {} {:.1}ms peer={peer}",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    response
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
