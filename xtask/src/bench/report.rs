//! Per-condition summary over rounds (paired ratios against the same round's baseline) and
//! its Markdown rendering.

use super::run::RunRecord;
use super::tracer::Condition;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Clone, Copy, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

#[derive(serde::Serialize)]
pub struct Summary {
    pub condition: Condition,
    pub runs: usize,
    pub conn_per_s: Option<Spread>,
    pub tw_per_s: Option<Spread>,
    /// conn/s of this condition / conn/s of the baseline, same round.
    pub ratio: Option<Spread>,
    pub tracer_cpu_pct: Option<Spread>,
    pub bpf_ns_per_run: Option<Spread>,
    pub bpf_ns_per_tw: Option<Spread>,
    pub bpf_cpu_pct: Option<Spread>,
    /// Sum over runs (events condition only: the others' losses are not observable).
    pub lost: Option<u64>,
    /// tw_enter lines (server namespace) / TcpExtTW while attached.
    pub events_per_tw: Option<Spread>,
    pub host_busy_pct: Option<Spread>,
    pub unavailable: Option<String>,
}

pub fn summarize(
    conds: &[Condition],
    runs: &[RunRecord],
    unavailable: &BTreeMap<Condition, String>,
) -> Vec<Summary> {
    let baseline: BTreeMap<u32, f64> = runs
        .iter()
        .filter(|r| r.condition == Condition::Baseline)
        .map(|r| (r.round, r.wrk.rps))
        .collect();
    conds
        .iter()
        .map(|&c| {
            let mine: Vec<&RunRecord> = runs.iter().filter(|r| r.condition == c).collect();
            let pick = |f: &dyn Fn(&RunRecord) -> Option<f64>| {
                Spread::of(mine.iter().filter_map(|r| f(r)).collect())
            };
            let bpf = |f: &dyn Fn(&super::run::BpfRecord) -> f64| {
                pick(&|r| r.tracer.as_ref()?.bpf.as_ref().map(f))
            };
            let events = mine
                .iter()
                .filter_map(|r| r.tracer.as_ref()?.events.as_ref())
                .collect::<Vec<_>>();
            Summary {
                condition: c,
                runs: mine.len(),
                conn_per_s: pick(&|r| Some(r.wrk.rps)),
                tw_per_s: pick(&|r| Some(r.tw_per_s)),
                ratio: (c != Condition::Baseline)
                    .then(|| pick(&|r| Some(r.wrk.rps / baseline.get(&r.round)?)))
                    .flatten(),
                tracer_cpu_pct: pick(&|r| r.tracer.as_ref().map(|t| t.cpu_pct)),
                bpf_ns_per_run: bpf(&|b| b.ns_per_run),
                bpf_ns_per_tw: bpf(&|b| b.ns_per_tw),
                bpf_cpu_pct: bpf(&|b| b.cpu_pct),
                lost: (!events.is_empty()).then(|| events.iter().map(|e| e.lost).sum()),
                events_per_tw: pick(&|r| {
                    let t = r.tracer.as_ref()?;
                    Some(t.events.as_ref()?.tw_enter as f64 / t.tw_while_attached.max(1) as f64)
                }),
                host_busy_pct: pick(&|r| Some(r.host_busy_pct)),
                unavailable: unavailable.get(&c).cloned(),
            }
        })
        .collect()
}

fn opt(s: Option<Spread>, f: impl Fn(f64) -> String) -> String {
    s.map_or("–".into(), |s| f(s.median))
}

/// The table plus the notes needed to read it, ready to paste into the README.
pub fn markdown(header: &str, summaries: &[Summary], notes: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{header}\n");
    md.push_str(
        "| condition | conn/s (median) | TIME-WAITs/s | conn/s vs no tracer: median [min, max] \
         | tracer CPU | BPF ns/run | BPF ns/TIME-WAIT | BPF CPU | lost events |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for s in summaries {
        if let Some(why) = &s.unavailable {
            let why = why.lines().next().unwrap_or("").replace('|', "\\|");
            let _ = writeln!(
                md,
                "| {} | unavailable: {why} | | | | | | | |",
                s.condition.label()
            );
            continue;
        }
        let ratio = match s.ratio {
            Some(r) => format!(
                "{:.3} [{:.3}, {:.3}] ({:+.1} %)",
                r.median,
                r.min,
                r.max,
                (r.median - 1.0) * 100.0
            ),
            None => "1 (reference)".into(),
        };
        let pct = |v: f64| format!("{v:.1} %");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {ratio} | {} | {} | {} | {} | {} |",
            s.condition.label(),
            opt(s.conn_per_s, |v| format!("{v:.0}")),
            opt(s.tw_per_s, |v| format!("{v:.0}")),
            opt(s.tracer_cpu_pct, pct),
            opt(s.bpf_ns_per_run, |v| format!("{v:.0}")),
            opt(s.bpf_ns_per_tw, |v| format!("{v:.0}")),
            opt(s.bpf_cpu_pct, |v| format!("{v:.2} %")),
            s.lost.map_or("n/a".into(), |n| n.to_string()),
        );
    }
    md.push('\n');
    for n in notes {
        let _ = writeln!(md, "- {n}");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn medians() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(vec![4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Spread::of(vec![]).is_none());
    }
}
