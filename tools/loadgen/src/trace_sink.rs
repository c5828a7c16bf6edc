//! Where the `production-traced` runs export their spans: an OTLP/HTTP endpoint in the
//! load generator's own process that takes every export and keeps nothing but counts.
//! The coordinator pays for building, batching, encoding and sending its spans as it
//! would to a collector; what receiving them costs is not the coordinator's and lands
//! on this process, as a collector's would on its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static SINK: OnceLock<Option<u16>> = OnceLock::new();
static REQUESTS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The sink's traces endpoint, started on first use; `None` if no port could be bound.
pub fn endpoint() -> Option<String> {
    let port = (*SINK.get_or_init(start))?;
    Some(format!("http://127.0.0.1:{port}/v1/traces"))
}

/// Exports received so far, and their bytes.
pub fn received() -> (u64, u64) {
    (
        REQUESTS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

fn start() -> Option<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = listener.local_addr().ok()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(stream));
        }
    });
    Some(port)
}

/// Answers each request of a kept-alive connection with an empty 200, as a collector
/// answers an accepted export (an empty protobuf `ExportTraceServiceResponse`).
fn serve(stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        REQUESTS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(length as u64, Ordering::Relaxed);
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
