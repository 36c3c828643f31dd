//! Load for `gatewatch serve` (used by `scripts/bench-serve`): posts the events of an NDJSON
//! file to `POST /v1/events` over one keep-alive HTTP/1.1 connection and prints figures.
//!
//! ```text
//! serve_load ADDR EVENTS_FILE single N     one event per request, N requests: rate and latency
//! serve_load ADDR EVENTS_FILE batch  K     every event, K per request: events/s
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// One request on the open connection; the answer's body length.
fn post(
    w: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    host: &str,
    body: &[u8],
) -> std::io::Result<usize> {
    write!(
        w,
        "POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    let mut line = String::new();
    let mut length = 0usize;
    let mut status = 0u16;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(s) = l.strip_prefix("HTTP/1.1 ") {
            status = s.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut buf = vec![0; length];
    r.read_exact(&mut buf)?;
    if status != 200 {
        return Err(std::io::Error::other(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&buf)
        )));
    }
    Ok(length)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, file, mode, n] = &args[..] else {
        eprintln!("usage: serve_load ADDR EVENTS_FILE single|batch N");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let text = std::fs::read(file)?;
    let lines: Vec<&[u8]> = text.split_inclusive(|b| *b == b'\n').collect();
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    match mode.as_str() {
        "single" => {
            let n = n.min(lines.len());
            let mut lat = Vec::with_capacity(n);
            let started = Instant::now();
            for l in &lines[..n] {
                let t = Instant::now();
                post(&mut w, &mut r, addr, l)?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let secs = started.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            println!(
                "single: {n} requests of one event in {secs:.2} s ({:.0} requests/s); latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
                n as f64 / secs,
                quantile(&lat, 0.5),
                quantile(&lat, 0.99),
                quantile(&lat, 0.999),
                lat[lat.len() - 1]
            );
        }
        "batch" => {
            let started = Instant::now();
            let mut bytes = 0;
            for chunk in lines.chunks(n.max(1)) {
                bytes += post(&mut w, &mut r, addr, &chunk.concat())?;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "batch: {} events, {n} per request, in {secs:.2} s ({:.0} events/s; {} bytes of records)",
                lines.len(),
                lines.len() as f64 / secs,
                bytes
            );
        }
        m => {
            eprintln!("unknown mode {m:?}: single or batch");
            std::process::exit(2);
        }
    }
    Ok(())
}
