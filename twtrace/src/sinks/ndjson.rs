//! Event streaming as NDJSON: one JSON object per line, one line per record.
//!
//! Every line has these fields, in this order:
//!
//! | field    | JSON type | meaning                                                        |
//! |----------|-----------|----------------------------------------------------------------|
//! | `type`   | string    | `tw_enter`, `tw_present`, `tw_exit`, `tw_reuse`, `tw_overflow`, `connect_eaddrnotavail`, `paws_reject`, `syn`, `tw_syn` or `lost` |
//! | `ts_ns`  | integer   | CLOCK_MONOTONIC nanoseconds when it happened (kernel `bpf_ktime_get_ns`) |
//! | `netns`  | integer   | network namespace inode number (`ls -l /proc/PID/ns/net`); 0 if unknown |
//! | `family` | string    | `ipv4` or `ipv6`; an IPv4 connection held by a dual-stack (`[::]`) socket is `ipv4`, its IPv4-mapped addresses (::ffff:a.b.c.d) shown as IPv4 |
//! | `local`  | string    | local `ip:port` (IPv6 as `[addr]:port`)                        |
//! | `remote` | string    | remote `ip:port` (IPv6 as `[addr]:port`)                       |
//!
//! Then, by `type`:
//!
//! | `type`                  | fields                                                            |
//! |-------------------------|-------------------------------------------------------------------|
//! | `tw_enter`              | `substate`: `TIME_WAIT` or `FIN_WAIT2`; `timeout_ms`: integer, the armed timeout |
//! | `tw_present`            | a TIME-WAIT that was already there when twtrace started (read once from the kernel's socket table, as `ss` reads it, before any traced event): `substate`; its exit comes later with `lifetime_ms: null` |
//! | `tw_exit`, `tw_reuse`   | `cause`: `expired`, `replaced_by_syn`, `killed_by_rst`, `reused` (always, for `tw_reuse`), `purged` or `unknown`; `lifetime_ms`: milliseconds spent in TIME-WAIT with 3 decimals, or `null` when the entry was not seen (the socket predates twtrace, or the in-kernel live table was full) |
//! | `tw_overflow`           | none (the close skipped TIME-WAIT: `tcp_max_tw_buckets` was full) |
//! | `connect_eaddrnotavail` | `pid`: integer, the process whose connect() failed (a kernel thread's for a connect made inside the kernel); `local` has port 0 unless bind() gave the socket one (none could be found) |
//! | `paws_reject`           | `path`: `timewait`, `established`, `syn_recv` or `syn_sent`; `tsval`: the segment's TSval; `ts_recent`: the socket's stored value (null where the kernel does not expose it); `regression`: ts_recent − tsval, signed, in timestamp ticks (null if either is unknown); `flags`: TCP flags, e.g. `SYN` or `PSH|ACK` (in bit order); `old_ack`: a late pure ACK (drop reason TCP_RFC7323_PAWS_ACK), counted apart from rejects |
//! | `syn`                   | a SYN reached a listener: `tsval` (null: the SYN had no timestamp option), `ts_recent` null, `regression` null |
//! | `tw_syn`                | a SYN reached a TIME-WAIT socket: `verdict`: `accepted_by_timestamp`, `accepted_by_sequence`, `rejected_paws` or `rejected_other`; `tsval`, `ts_recent`, `regression` |
//! | `lost`                  | `program`: string, the kernel program or slot; `count`: integer, events it could not deliver; `netns` is 0 and `local`/`remote` are `0.0.0.0:0` |
//!
//! Example:
//!
//! ```text
//! {"type":"tw_exit","ts_ns":81234567890,"netns":4026531840,"family":"ipv4","local":"10.0.0.1:80","remote":"192.0.2.7:43210","cause":"expired","lifetime_ms":60000.412}
//! ```

use std::io::{self, Cursor, Write};
use std::net::SocketAddr;

use crate::event::{Record, What};

/// Large enough for any record with an ordinary program name (the longest, an IPv6 record
/// with scope ids, is about 250 bytes).
const LINE_BUF: usize = 512;

/// Writes `rec` as one JSON object and a newline. Does not allocate: the line is formatted
/// on the stack and handed to `w` in one `write_all`, so even an unbuffered `w` gets one
/// write per record, never a partial line from an error halfway through formatting.
pub fn write_record(w: &mut impl Write, rec: &Record) -> io::Result<()> {
    let mut buf = [0u8; LINE_BUF];
    let mut cur = Cursor::new(&mut buf[..]);
    match write_fields(&mut cur, rec) {
        Ok(()) => {
            let len = cur.position() as usize;
            w.write_all(&buf[..len])
        }
        // Too long for the stack buffer (only a very long program name can do that): nothing
        // has reached `w` yet, so write it again straight through.
        Err(_) => write_fields(w, rec),
    }
}

fn write_fields(w: &mut impl Write, rec: &Record) -> io::Result<()> {
    // The string values written bare are fixed identifiers and socket addresses, none of which
    // contain characters JSON needs escaped. Pieces go out with write_all and numbers through
    // itoa: core::fmt's machinery was most of this sink's cost at 50k records/s.
    w.write_all(br#"{"type":""#)?;
    w.write_all(rec.type_name().as_bytes())?;
    w.write_all(br#"","ts_ns":"#)?;
    w.num(rec.ts_ns)?;
    w.write_all(br#","netns":"#)?;
    w.num(rec.netns)?;
    w.write_all(br#","family":""#)?;
    w.write_all(rec.family().as_bytes())?;
    w.write_all(br#"","local":""#)?;
    w.sock(&rec.local)?;
    w.write_all(br#"","remote":""#)?;
    w.sock(&rec.remote)?;
    w.write_all(b"\"")?;
    match rec.what {
        What::TwEnter {
            substate,
            timeout_ms,
        } => {
            w.write_all(br#","substate":""#)?;
            w.write_all(substate.as_str().as_bytes())?;
            w.write_all(br#"","timeout_ms":"#)?;
            w.num(timeout_ms)?;
        }
        // Knowledge for the aggregate, not events: `twtrace events` does not print them.
        What::Listening | What::LiveReset => {}
        What::TwPresent { substate, .. } => {
            w.write_all(br#","substate":""#)?;
            w.write_all(substate.as_str().as_bytes())?;
            w.write_all(b"\"")?;
        }
        What::TwExit { cause, lifetime_ns } => {
            w.write_all(br#","cause":""#)?;
            w.write_all(cause.as_str().as_bytes())?;
            w.write_all(br#"","lifetime_ms":"#)?;
            match lifetime_ns {
                // Integer arithmetic rounded to the microsecond: exact, no float formatting.
                Some(ns) => {
                    let us = ns.saturating_add(500) / 1000;
                    w.num(us / 1000)?;
                    let frac = us % 1000;
                    let digits = [
                        b'.',
                        b'0' + (frac / 100) as u8,
                        b'0' + (frac / 10 % 10) as u8,
                        b'0' + (frac % 10) as u8,
                    ];
                    w.write_all(&digits)?;
                }
                None => w.write_all(b"null")?,
            }
        }
        What::TwOverflow => {}
        What::ConnectAddrNotAvail { pid } => {
            w.write_all(br#","pid":"#)?;
            w.num(pid)?;
        }
        What::Lost {
            program,
            count,
            reason,
        } => {
            w.write_all(br#","program":"#)?;
            write_json_str(w, program)?;
            w.write_all(br#","count":"#)?;
            w.num(count)?;
            w.write_all(br#","reason":""#)?;
            w.write_all(reason.as_str().as_bytes())?;
            w.write_all(b"\"")?;
        }
        What::PawsReject {
            path,
            tsval,
            ts_recent,
            tcp_flags,
            old_ack,
        } => {
            w.write_all(br#","path":""#)?;
            w.write_all(path.as_str().as_bytes())?;
            w.write_all(b"\"")?;
            write_timestamps(w, tsval, ts_recent)?;
            w.write_all(br#","flags":""#)?;
            write_tcp_flags(w, tcp_flags)?;
            w.write_all(if old_ack {
                br#"","old_ack":true"#
            } else {
                br#"","old_ack":false"#
            })?;
        }
        What::Syn { tsval } => write_timestamps(w, tsval, None)?,
        What::TwSyn {
            verdict,
            tsval,
            ts_recent,
        } => {
            w.write_all(br#","verdict":""#)?;
            w.write_all(verdict.as_str().as_bytes())?;
            w.write_all(b"\"")?;
            write_timestamps(w, tsval, ts_recent)?;
        }
    }
    w.write_all(b"}\n")
}

/// Cheap number and address formatting for any writer.
trait Pieces: Write {
    fn num(&mut self, v: impl itoa::Integer) -> io::Result<()> {
        self.write_all(itoa::Buffer::new().format(v).as_bytes())
    }

    /// `ip:port`, IPv6 as `[addr]:port`. IPv4 by hand (the common case); IPv6 through
    /// core::fmt, which knows the zero-run compression rules.
    fn sock(&mut self, a: &SocketAddr) -> io::Result<()> {
        match a {
            SocketAddr::V4(a) => {
                let [o1, o2, o3, o4] = a.ip().octets();
                self.num(o1)?;
                for o in [o2, o3, o4] {
                    self.write_all(b".")?;
                    self.num(o)?;
                }
            }
            SocketAddr::V6(a) => {
                write!(self, "[{}", a.ip())?;
                if a.scope_id() != 0 {
                    self.write_all(b"%")?;
                    self.num(a.scope_id())?;
                }
                self.write_all(b"]")?;
            }
        }
        self.write_all(b":")?;
        self.num(a.port())
    }
}

impl<W: Write + ?Sized> Pieces for W {}

/// `tsval`, `ts_recent` and `regression` (ts_recent - tsval, signed ticks), null when unknown.
fn write_timestamps(
    w: &mut impl Write,
    tsval: Option<u32>,
    ts_recent: Option<u32>,
) -> io::Result<()> {
    let reg = tsval
        .zip(ts_recent)
        .map(|(t, r)| crate::event::regression(r, t));
    for (key, v) in [
        (&br#","tsval":"#[..], tsval.map(i64::from)),
        (br#","ts_recent":"#, ts_recent.map(i64::from)),
        (br#","regression":"#, reg),
    ] {
        w.write_all(key)?;
        match v {
            Some(v) => w.num(v)?,
            None => w.write_all(b"null")?,
        }
    }
    Ok(())
}

/// TCP flags as `SYN|ACK` (empty string for none).
pub fn write_tcp_flags(w: &mut impl Write, flags: u8) -> io::Result<()> {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    let mut first = true;
    for (bit, name) in NAMES.iter().enumerate() {
        if flags & (1 << bit) != 0 {
            if !first {
                w.write_all(b"|")?;
            }
            w.write_all(name.as_bytes())?;
            first = false;
        }
    }
    Ok(())
}

/// Writes `s` as a JSON string. Program names are identifiers in practice; escaping keeps the
/// line valid whatever they become.
fn write_json_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(b"\"")?;
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        if ch == '"' || ch == '\\' || ch < ' ' {
            w.write_all(&s.as_bytes()[start..i])?;
            match ch {
                '"' => w.write_all(b"\\\"")?,
                '\\' => w.write_all(b"\\\\")?,
                c => write!(w, "\\u{:04x}", c as u32)?,
            }
            start = i + ch.len_utf8();
        }
    }
    w.write_all(&s.as_bytes()[start..])?;
    w.write_all(b"\"")
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::net::SocketAddr;

    use serde_json::Value;

    use super::*;
    use crate::event::{ExitCause, LossReason, Substate};

    /// Counts this thread's allocations, to check the steady state allocates nothing. Per
    /// thread because the test harness runs tests in parallel.
    struct Counting;

    thread_local! {
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
    }

    // SAFETY: forwards to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCS.with(|n| n.set(n.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn rec(local: &str, remote: &str, what: What) -> Record {
        Record {
            ts_ns: 81_234_567_890,
            netns: 4026531840,
            local: local.parse::<SocketAddr>().unwrap(),
            remote: remote.parse::<SocketAddr>().unwrap(),
            what,
        }
    }

    /// Writes one record, checks it is exactly one line, and parses it back.
    fn line(rec: &Record) -> Value {
        let mut out = Vec::new();
        write_record(&mut out, rec).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ts_ns"], rec.ts_ns);
        assert_eq!(v["netns"], rec.netns);
        assert_eq!(v["type"], rec.type_name());
        v
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    const COMMON: [&str; 6] = ["type", "ts_ns", "netns", "family", "local", "remote"];

    fn fields(extra: &[&'static str]) -> Vec<&'static str> {
        let mut f: Vec<_> = COMMON.into_iter().chain(extra.iter().copied()).collect();
        f.sort_unstable(); // serde_json's map is sorted by key
        f
    }

    #[test]
    fn tw_enter() {
        let what = What::TwEnter {
            substate: Substate::FinWait2,
            timeout_ms: 60_000,
        };
        let v = line(&rec("10.0.0.1:43210", "192.0.2.7:443", what));
        assert_eq!(keys(&v), fields(&["substate", "timeout_ms"]));
        assert_eq!(v["type"], "tw_enter");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["local"], "10.0.0.1:43210");
        assert_eq!(v["remote"], "192.0.2.7:443");
        assert_eq!(v["substate"], "FIN_WAIT2");
        assert_eq!(v["timeout_ms"], 60_000);
    }

    #[test]
    fn tw_exit_with_lifetime_ipv6() {
        let what = What::TwExit {
            cause: ExitCause::KilledByRst,
            lifetime_ns: Some(60_000_412_499),
        };
        let v = line(&rec("[2001:db8::1]:80", "[2001:db8::2]:51000", what));
        assert_eq!(keys(&v), fields(&["cause", "lifetime_ms"]));
        assert_eq!(v["type"], "tw_exit");
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["local"], "[2001:db8::1]:80");
        assert_eq!(v["remote"], "[2001:db8::2]:51000");
        assert_eq!(v["cause"], "killed_by_rst");
        assert_eq!(v["lifetime_ms"].as_f64(), Some(60_000.412));
    }

    #[test]
    fn lifetime_has_three_decimals_and_rounds() {
        let text = |ns| {
            let what = What::TwExit {
                cause: ExitCause::Expired,
                lifetime_ns: Some(ns),
            };
            let mut out = Vec::new();
            write_record(&mut out, &rec("10.0.0.1:1", "10.0.0.2:2", what)).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(text(0).contains(r#""lifetime_ms":0.000}"#));
        assert!(text(1_500).contains(r#""lifetime_ms":0.002}"#));
        assert!(text(1_000_000).contains(r#""lifetime_ms":1.000}"#));
        assert!(text(59_999_999_600).contains(r#""lifetime_ms":60000.000}"#));
        assert!(text(u64::MAX).contains(r#""lifetime_ms":18446744073709.551}"#));
    }

    #[test]
    fn tw_reuse_without_lifetime() {
        let what = What::TwExit {
            cause: ExitCause::Reused,
            lifetime_ns: None,
        };
        let v = line(&rec("10.0.0.1:43210", "192.0.2.7:443", what));
        assert_eq!(keys(&v), fields(&["cause", "lifetime_ms"]));
        assert_eq!(v["type"], "tw_reuse");
        assert_eq!(v["cause"], "reused");
        assert!(v["lifetime_ms"].is_null());
    }

    #[test]
    fn paws_reject_and_old_ack() {
        let what = |old_ack| What::PawsReject {
            path: crate::event::PawsPath::Established,
            tsval: Some(900),
            ts_recent: Some(1000),
            tcp_flags: 0x18,
            old_ack,
        };
        let v = line(&rec("10.0.0.1:443", "192.0.2.7:5555", what(false)));
        assert_eq!(
            keys(&v),
            fields(&[
                "path",
                "tsval",
                "ts_recent",
                "regression",
                "flags",
                "old_ack"
            ])
        );
        assert_eq!(v["path"], "established");
        assert_eq!(v["regression"], 100);
        assert_eq!(v["flags"], "PSH|ACK");
        assert_eq!(v["old_ack"], false);
        let v = line(&rec("10.0.0.1:443", "192.0.2.7:5555", what(true)));
        assert_eq!(v["old_ack"], true);
    }

    #[test]
    fn tw_overflow() {
        let v = line(&rec("10.0.0.1:80", "192.0.2.7:5555", What::TwOverflow));
        assert_eq!(keys(&v), fields(&[]));
        assert_eq!(v["type"], "tw_overflow");
    }

    #[test]
    fn connect_eaddrnotavail() {
        let what = What::ConnectAddrNotAvail { pid: 4242 };
        let v = line(&rec("10.0.0.1:0", "192.0.2.7:443", what));
        assert_eq!(keys(&v), fields(&["pid"]));
        assert_eq!(v["type"], "connect_eaddrnotavail");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["local"], "10.0.0.1:0");
    }

    #[test]
    fn lost() {
        let what = What::Lost {
            program: "tw_exit",
            count: 17,
            reason: LossReason::RingFull,
        };
        let mut r = rec("0.0.0.0:0", "0.0.0.0:0", what);
        r.netns = 0;
        let v = line(&r);
        assert_eq!(keys(&v), fields(&["program", "count", "reason"]));
        assert_eq!(v["type"], "lost");
        assert_eq!(v["program"], "tw_exit");
        assert_eq!(v["count"], 17);
        assert_eq!(v["reason"], "ring_full");
        // Runs the kernel skipped name the kernel program.
        let what = What::Lost {
            program: "tw_exit_timer_cancel",
            count: 2,
            reason: LossReason::SkippedRuns,
        };
        let v = line(&rec("0.0.0.0:0", "0.0.0.0:0", what));
        assert_eq!(v["program"], "tw_exit_timer_cancel");
        assert_eq!(v["reason"], "skipped_runs");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["local"], "0.0.0.0:0");
        assert_eq!(v["remote"], "0.0.0.0:0");
    }

    #[test]
    fn odd_and_long_program_names_stay_valid() {
        const LONG: &str = concat!(
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-",
            "a-very-long-program-name-that-does-not-fit-the-stack-buffer-\"\\\u{1}é"
        );
        assert!(LONG.len() > LINE_BUF);
        let what = What::Lost {
            program: LONG,
            count: 1,
            reason: LossReason::RingFull,
        };
        let v = line(&rec("0.0.0.0:0", "0.0.0.0:0", what));
        assert_eq!(v["program"], LONG);
    }

    #[test]
    fn longest_address_record_fits_the_stack_buffer() {
        let addr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535";
        let what = What::TwExit {
            cause: ExitCause::ReplacedBySyn,
            lifetime_ns: Some(u64::MAX),
        };
        let mut r = rec(addr, addr, what);
        (r.ts_ns, r.netns) = (u64::MAX, u32::MAX);
        let mut buf = [0u8; LINE_BUF];
        let mut cur = Cursor::new(&mut buf[..]);
        write_fields(&mut cur, &r).unwrap();
        assert!(cur.position() < 300, "{}", cur.position());
        line(&r);
    }

    #[test]
    fn addresses_read_as_rust_prints_them() {
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.12.1:8080",
            "[::]:0",
            "[::1]:443",
            "[2001:db8::1]:80",
            "[::ffff:192.0.2.1]:1",
            "[fe80::1%4]:22",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            out.sock(&addr).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn steady_state_does_not_allocate() {
        let records = [
            rec(
                "10.0.0.1:43210",
                "192.0.2.7:443",
                What::TwEnter {
                    substate: Substate::TimeWait,
                    timeout_ms: 60_000,
                },
            ),
            rec(
                "[2001:db8::1]:80",
                "[2001:db8::2]:51000",
                What::TwExit {
                    cause: ExitCause::Expired,
                    lifetime_ns: Some(60_000_000_000),
                },
            ),
            rec(
                "10.0.0.1:0",
                "192.0.2.7:443",
                What::ConnectAddrNotAvail { pid: 1 },
            ),
            rec("10.0.0.1:80", "192.0.2.7:5555", What::TwOverflow),
            rec(
                "0.0.0.0:0",
                "0.0.0.0:0",
                What::Lost {
                    program: "tw_enter",
                    count: 3,
                    reason: LossReason::RingFull,
                },
            ),
        ];
        let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
        let before = ALLOCS.with(Cell::get);
        for _ in 0..100 {
            out.clear();
            for r in &records {
                write_record(&mut out, r).unwrap();
            }
        }
        let after = ALLOCS.with(Cell::get);
        assert!(
            out.len() < out.capacity(),
            "the sink itself must not have grown"
        );
        assert_eq!(after - before, 0, "write_record allocated");
    }
}
