//! How late the media engine's packets leave: opens N sessions (default 2000) on the real
//! engine, each sending 20 ms G.711 frames to one sink socket on loopback, runs for a few
//! seconds and prints the engine's send-lateness histogram (time from a frame falling due to
//! its `sendto` returning) and the sink's packet count.
//!
//! ```sh
//! cargo run --release --example media_timing -- [CALLS] [SECONDS] [WORKERS]
//! ```
//!
//! README's Performance table has the figures (two runs each, before and after time slots).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pinbridge::media::engine::{
    Engine, EngineConfig, EngineStats, MediaParams, SEND_LATENESS_BOUNDS, SessionId,
};
use pinbridge::media::{Codec, Direction};

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args.next().map_or(2000, |a| a.parse().expect("CALLS"));
    let seconds: u64 = args.next().map_or(5, |a| a.parse().expect("SECONDS"));
    let workers: usize = args.next().map_or(2, |a| a.parse().expect("WORKERS"));
    raise_nofile(calls + 1024);

    let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("sink socket");
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("sink timeout");
    let sink_addr = sink.local_addr().expect("sink address");
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if sink.recv_from(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (before, after) = runtime.block_on(async {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let engine = Engine::start(
            EngineConfig {
                bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                rtp_ports: 20000..=59999,
                rtp_timeout: Duration::from_secs(3600),
                workers,
            },
            tx,
        )
        .expect("engine");
        let params = MediaParams {
            remote: Some(sink_addr),
            signalling_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            codec: Codec::Pcmu,
            payload_type: Codec::Pcmu.payload_type(),
            telephone_event: None,
            direction: Direction::SendRecv,
            inband_dtmf: false,
        };
        for i in 0..calls {
            let id = SessionId(i + 1);
            engine.open(id).expect("open");
            engine.configure(id, params).expect("configure");
        }
        // Warm up (every session past its first tick), then measure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = engine.stats();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let after = engine.stats();
        for i in 0..calls {
            engine.close(SessionId(i + 1));
        }
        (before, after)
    });
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("sink reader");
    report(
        calls,
        seconds,
        workers,
        &before,
        &after,
        received.load(Ordering::Relaxed),
    );
}

fn report(
    calls: u64,
    seconds: u64,
    workers: usize,
    before: &EngineStats,
    after: &EngineStats,
    received: u64,
) {
    let sent = after.packets_sent - before.packets_sent;
    let buckets: Vec<u64> = after
        .send_lateness
        .iter()
        .zip(&before.send_lateness)
        .map(|(a, b)| a - b)
        .collect();
    let total: u64 = buckets.iter().sum();
    println!(
        "{calls} calls, {workers} workers, {seconds} s: {sent} packets sent ({:.1}/s per call), \
         {} send failures, sink received {received} in all",
        sent as f64 / seconds as f64 / calls as f64,
        after.send_failures - before.send_failures,
    );
    let mut cumulative = 0;
    for (i, n) in buckets.iter().enumerate() {
        cumulative += n;
        let label = match SEND_LATENESS_BOUNDS.get(i) {
            Some(bound) => format!("< {:>2} ms", bound.as_millis()),
            None => ">= 20 ms".to_string(),
        };
        println!(
            "  late {label}: {n:>9}  ({:5.1} % cumulative)",
            100.0 * cumulative as f64 / total.max(1) as f64
        );
    }
}

fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
