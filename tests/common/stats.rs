//! `GET /api/stats` of a running server (issue 7): the gauges a test reads to prove that
//! calls, SIP legs, media sessions and RTP ports return to zero.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use super::server::Server;

/// One `GET /api/stats` over plain HTTP/1.1 (bounded by timeouts); panics on anything but a
/// 200 with a JSON object.
pub fn stats(server: &Server) -> Value {
    let mut stream = TcpStream::connect(server.http_addr()).expect("connecting to the admin API");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set_read_timeout");
    let request = format!(
        "GET /api/stats HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.http_addr(),
        server.admin_token()
    );
    stream
        .write_all(request.as_bytes())
        .expect("sending GET /api/stats");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .expect("reading the stats response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET /api/stats answered {head}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("stats body {body:?}: {e}"))
}

/// A gauge of `stats` as a number.
pub fn gauge(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// The gauges that must all be 0 once every call has ended.
pub const HELD: [&str; 4] = ["calls", "sip_legs", "media_sessions", "rtp_ports_in_use"];

/// Polls until every gauge in [`HELD`] is 0, at most `timeout`; returns the last reading and
/// whether it got there.
pub fn wait_idle(server: &Server, timeout: Duration) -> (Value, bool) {
    let mut last = Value::Null;
    let idle = super::wait_until(timeout, Duration::from_millis(200), || {
        last = stats(server);
        HELD.iter().all(|g| gauge(&last, g) == 0)
    });
    (last, idle)
}

/// One admin API request with a JSON body (bounded by timeouts): the status and the body
/// parsed as JSON (`Null` when empty or not JSON).
pub fn admin_request(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.http_addr()).expect("connecting to the admin API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set_read_timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.http_addr(),
        server.admin_token(),
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("sending the request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .expect("reading the response");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}
