//! The PAWS section of the live table: top source IPs by rejects, with their clocks, how far
//! behind the rejected clocks were, NAT suspicion, and predicted versus observed reject rates.

use std::fmt::Write as _;

use crate::aggregate::paws::{PawsView, SourceRow};

const HEADER: [&str; 13] = [
    "SOURCE_IP",
    "REJECTS",
    "TW",
    "EST",
    "SYN_RECV",
    "SYN_SENT",
    "REGR_MAX",
    "SYNS",
    "NO_TS",
    "CLOCKS",
    "NAT",
    "OBS/s",
    "PRED/s",
];

/// Appends the section with at most `rows` of the view's top rows; with no source IP seen
/// yet, one line that says so (a missing section would read as PAWS not being traced).
pub fn render(view: &PawsView, evictions: u64, rows: usize, out: &mut String) {
    if view.sources == 0 {
        let _ = writeln!(
            out,
            "PAWS: no source IP yet (SYNs at listeners and PAWS rejects, per source IP)\n"
        );
        return;
    }
    let total = view.rejects_total;
    // Late ACKs dropped by PAWS (6.14+) are reordering, not clocks: a total, not a column.
    let old_acks = view.old_acks_total;
    let old_acks = if old_acks == 0 {
        String::new()
    } else {
        format!(" (and {old_acks} old ACKs)")
    };
    let _ = writeln!(
        out,
        "PAWS: {}, {}{old_acks}, {evictions} evicted",
        super::plural(view.sources as u64, "source IP"),
        super::plural(total, "reject")
    );
    let shown = super::table::first(&view.top, rows);
    let cells: Vec<[String; 13]> = shown.iter().map(cells).collect();
    let mut widths = HEADER.map(str::len);
    for c in &cells {
        for (w, s) in widths.iter_mut().zip(c) {
            *w = (*w).max(s.len());
        }
    }
    let line = |out: &mut String, c: &[&str]| {
        for (i, (s, w)) in c.iter().zip(widths).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            if i == 0 {
                let _ = write!(out, "{sep}{s:<w$}");
            } else {
                let _ = write!(out, "{sep}{s:>w$}");
            }
        }
        out.push('\n');
    };
    line(out, &HEADER);
    for c in &cells {
        line(out, &c.each_ref().map(String::as_str));
    }
    out.push('\n');
}

fn cells(r: &SourceRow) -> [String; 13] {
    let clocks = if r.clocks_low == r.clocks_high {
        r.clocks.to_string()
    } else if r.clocks_high == u32::MAX {
        // No useful upper bound: more lines were forgotten than the estimator keeps.
        format!("{} ({}+)", r.clocks, r.clocks_low)
    } else {
        format!("{} ({}-{})", r.clocks, r.clocks_low, r.clocks_high)
    };
    [
        r.ip.to_string(),
        r.rejects_total.to_string(),
        r.rejects.timewait.to_string(),
        r.rejects.established.to_string(),
        r.rejects.syn_recv.to_string(),
        r.rejects.syn_sent.to_string(),
        r.regression.max.map_or("-".into(), |m| m.to_string()),
        r.syns.to_string(),
        r.syns_without_ts.to_string(),
        clocks,
        if r.nat_suspected { "yes" } else { "no" }.to_owned(),
        format!("{:.2}", r.observed_rejects_per_s),
        format!("{:.2}", r.predicted_rejects_per_s),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_line(view: &PawsView, evictions: u64) -> String {
        let mut out = String::new();
        render(view, evictions, 20, &mut out);
        out.lines().next().unwrap().to_owned()
    }

    #[test]
    fn the_totals_line_counts_in_words() {
        let mut view = PawsView {
            sources: 1,
            rejects_total: 1,
            ..PawsView::default()
        };
        assert_eq!(
            first_line(&view, 0),
            "PAWS: 1 source IP, 1 reject, 0 evicted"
        );
        view.sources = 3;
        view.rejects_total = 0;
        view.old_acks_total = 2;
        assert_eq!(
            first_line(&view, 4),
            "PAWS: 3 source IPs, 0 rejects (and 2 old ACKs), 4 evicted"
        );
    }
}
