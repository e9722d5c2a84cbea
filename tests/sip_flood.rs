//! Issue 7, floods, against the real binary over real sockets: an INVITE flood from one
//! source (127.0.0.1) is answered `503` with `Retry-After` and then dropped, while a caller
//! from another source (127.0.0.2 — Linux routes all of 127/8 to lo) still connects; the
//! global call limit answers `503`; an OPTIONS flood is cut to the per-source message rate;
//! TCP: per-source connection limit, idle timeout, and no slowloris.
//!
//! Every loop is bounded in count; times are printed as figures, never asserted as limits.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use common::sip::{SipMessage, tcp_connect_from};
use common::{RtpReceiver, SIP_STEP, SdpOffer, Server, SipClient, dial, hang_up};

const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const HONEST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The honest caller from 127.0.0.2: INVITE → 200 (timed) → ACK → BYE → 200.
fn honest_call(server: &Server, tcp: bool) -> Duration {
    let mut c = if tcp {
        SipClient::tcp_from(HONEST, server.sip_addr())
    } else {
        SipClient::udp_from(HONEST, server.sip_addr())
    };
    let rtp = RtpReceiver::bind();
    let started = Instant::now();
    let mut d = dial(&mut c, "1000", &SdpOffer::g711(rtp.addr()));
    let setup = started.elapsed();
    hang_up(&mut c, &mut d.call);
    setup
}

/// CPU time (user + system) the process has used, from /proc/PID/stat, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc stat");
    let after_comm = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime), counted from after the comm field.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn invite_flood_from_one_source_gets_503_then_silence_while_another_source_connects() {
    let (rate, burst) = (5u32, 10u32);
    let server = Server::builder()
        .arg("--invite-rate")
        .arg(rate.to_string())
        .arg("--invite-burst")
        .arg(burst.to_string())
        .arg("--retry-after")
        .arg("1")
        .start();
    let addr = server.sip_addr();
    const FLOOD: usize = 300;
    let flood = std::thread::spawn(move || {
        let mut c = SipClient::udp_from(FLOODER, addr);
        let offer = SdpOffer::g711("127.0.0.1:9".parse().unwrap()).render();
        let started = Instant::now();
        let mut call_ids = Vec::with_capacity(FLOOD);
        // 300 INVITEs at about 100 per second (one every 10 ms).
        for i in 0..FLOOD {
            let mut call = c.new_call("1000");
            let text = c.invite_text(&mut call, Some(("application/sdp", &offer)), &[]);
            c.send_raw(text.as_bytes());
            call_ids.push(call.call_id);
            let next = started + Duration::from_millis(10 * (i as u64 + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let elapsed = started.elapsed();
        let answers: Vec<SipMessage> = c.drain(Duration::from_millis(500));
        (elapsed, answers)
    });
    // The honest caller starts a second into the flood.
    std::thread::sleep(Duration::from_secs(1));
    let setup = honest_call(&server, false);
    let (elapsed, answers) = flood.join().expect("flood thread");

    let calls_with = |status: u16| {
        let mut ids: Vec<&str> = answers
            .iter()
            .filter(|m| m.status() == Some(status))
            .filter_map(|m| m.call_id())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    let admitted = calls_with(100);
    let told = calls_with(503);
    let silent = FLOOD - admitted - told;
    println!(
        "INVITE flood: {FLOOD} INVITEs in {:.2} s ({:.0}/s) from {FLOODER}: {admitted} admitted, {told} answered 503, {silent} dropped; honest caller from {HONEST}: setup {:.1} ms",
        elapsed.as_secs_f64(),
        FLOOD as f64 / elapsed.as_secs_f64(),
        setup.as_secs_f64() * 1000.0
    );
    let allowed = burst as f64 + rate as f64 * elapsed.as_secs_f64() + 2.0;
    assert!(
        admitted >= burst as usize,
        "the burst was not admitted: {admitted}"
    );
    assert!(
        admitted as f64 <= allowed,
        "{admitted} admitted, more than {allowed}"
    );
    // One 503 per Retry-After (1 s) per source, at most.
    assert!(told >= 1, "no 503");
    assert!(
        told as f64 <= elapsed.as_secs_f64() + 2.0,
        "{told} 503s in {elapsed:?}"
    );
    let busy = answers.iter().find(|m| m.status() == Some(503)).unwrap();
    assert_eq!(busy.header("Retry-After"), Some("1"), "{}", busy.to_text());
    assert!(silent > FLOOD / 2, "only {silent} dropped");
    assert!(server.wait_for_log("INVITE flood", SIP_STEP));
}

#[test]
fn global_call_limit_answers_503_until_a_call_ends() {
    let server = Server::builder().arg("--max-calls").arg("2").start();
    let mut c = SipClient::udp_from(HONEST, server.sip_addr());
    let rtp = RtpReceiver::bind();
    let offer = SdpOffer::g711(rtp.addr());
    let mut first = dial(&mut c, "1000", &offer);
    let _second = dial(&mut c, "1000", &offer);
    let mut third = c.invite("1000", &offer);
    let busy = c.expect_final(&mut third, "INVITE", SIP_STEP);
    assert_eq!(busy.status(), Some(503), "{}", busy.to_text());
    assert!(busy.header("Retry-After").is_some(), "{}", busy.to_text());
    c.ack(&third, &busy);
    hang_up(&mut c, &mut first.call);
    let mut fourth = dial(&mut c, "1000", &offer);
    hang_up(&mut c, &mut fourth.call);
    assert!(server.wait_for_log("call limit reached", SIP_STEP));
}

#[test]
fn options_flood_is_cut_to_the_message_rate_and_costs_little() {
    let server = Server::start();
    let pid = server.pid();
    let mut c = SipClient::udp_from(FLOODER, server.sip_addr());
    let (_, text) = c.options_text();
    const FLOOD: usize = 5000;
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    // The same OPTIONS again and again (answered statelessly, each one), 20 every 10 ms:
    // 2000 per second, slow enough for the socket buffers to deliver them all.
    // Answers are read between batches so our own socket buffer does not overflow.
    let mut answered = 0;
    for i in 0..FLOOD {
        let _ = c.try_send_raw(text.as_bytes());
        if i % 20 == 19 {
            let next = started + Duration::from_millis(10 * (i as u64 + 1) / 20);
            let left = next.saturating_duration_since(Instant::now());
            answered += c.drain(left.max(Duration::from_millis(1))).len();
        }
    }
    let elapsed = started.elapsed();
    answered += c.drain(Duration::from_millis(500)).len();
    let cpu = cpu_ticks(pid) - cpu_before;
    println!(
        "OPTIONS flood: {FLOOD} in {:.2} s ({:.0}/s): {answered} answered; server CPU {} ticks ({:.1} µs per OPTIONS)",
        elapsed.as_secs_f64(),
        FLOOD as f64 / elapsed.as_secs_f64(),
        cpu,
        cpu as f64 * 10_000.0 / FLOOD as f64
    );
    // Default message limit: 200/s, burst 400.
    let allowed = 400.0 + 200.0 * (elapsed.as_secs_f64() + 0.5) + 5.0;
    assert!(
        answered >= 400,
        "only {answered} answered: not even the burst"
    );
    assert!(
        answered as f64 <= allowed,
        "{answered} answered, over {allowed}"
    );
    let setup = honest_call(&server, false);
    println!(
        "honest caller after the OPTIONS flood: setup {:.1} ms",
        setup.as_secs_f64() * 1000.0
    );
    assert!(server.wait_for_log("SIP message flood", SIP_STEP));
}

/// Reads until EOF (the server closed) or `timeout`; true on EOF.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn tcp_connections_are_limited_per_source_idle_ones_close_and_slowloris_fails() {
    let server = Server::builder()
        .arg("--tcp-per-source")
        .arg("3")
        .arg("--tcp-idle-timeout")
        .arg("3")
        .arg("--tcp-message-timeout")
        .arg("2")
        .start();
    let addr = server.sip_addr();
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| tcp_connect_from(FLOODER, addr).expect("connect"))
        .collect();
    // The fourth from the same source is accepted by the kernel and closed by the server.
    let mut fourth = tcp_connect_from(FLOODER, addr).expect("connect");
    assert!(
        closed_within(&mut fourth, SIP_STEP),
        "fourth connection stayed open"
    );
    assert!(server.wait_for_log("TCP connection refused", SIP_STEP));
    // Another source is not affected: a TCP call from 127.0.0.2 connects.
    let setup = honest_call(&server, true);
    println!(
        "TCP honest caller with 3 flood connections held: setup {:.1} ms",
        setup.as_secs_f64() * 1000.0
    );

    // Slowloris on connection 0: one octet of a request every 300 ms.
    let started = Instant::now();
    let drip = b"OPTIONS sip:bridge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999\r\n";
    let mut slow_closed = false;
    for b in drip.iter() {
        if held[0].write_all(&[*b]).is_err() {
            slow_closed = true;
            break;
        }
        if closed_within(&mut held[0], Duration::from_millis(300)) {
            slow_closed = true;
            break;
        }
    }
    let slow_after = started.elapsed();
    assert!(
        slow_closed,
        "a request dripped for {slow_after:?} was not cut off"
    );
    // Connections 1 and 2 said nothing: closed by the idle timeout.
    assert!(
        closed_within(&mut held[1], SIP_STEP),
        "idle connection stayed open"
    );
    assert!(
        closed_within(&mut held[2], SIP_STEP),
        "idle connection stayed open"
    );
    println!(
        "slowloris cut after {:.1} s (limit 2 s); idle connections closed (limit 3 s)",
        slow_after.as_secs_f64()
    );
    assert!(server.wait_for_log("message not complete within the limit", SIP_STEP));
    assert!(
        server.wait_for_log("reason=\"idle\"", SIP_STEP)
            || server.wait_for_log("reason=idle", SIP_STEP)
    );
    // Their slots are free again: the flooding source may connect and be answered.
    let mut again = SipClient::tcp_from(FLOODER, addr);
    let mut call = again.options();
    let ok = again.expect_final(&mut call, "OPTIONS", SIP_STEP);
    assert_eq!(ok.status(), Some(200));
}
