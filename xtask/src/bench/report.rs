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
    /// The same over rounds where neither run had other load above --max-background.
    pub ratio_undisturbed: Option<Spread>,
    /// Machine CPU per connection of this condition / the baseline's, same round: the
    /// tracer's cost as work added per connection, immune to idle and stolen time.
    pub cpu_ratio: Option<Spread>,
    pub steal_pct: Option<Spread>,
    pub undisturbed_runs: usize,
    pub others_pct: Option<Spread>,
    pub tracer_cpu_pct: Option<Spread>,
    pub bpf_ns_per_run: Option<Spread>,
    pub bpf_ns_per_tw: Option<Spread>,
    pub bpf_cpu_pct: Option<Spread>,
    /// Sum over runs (events condition only: the others' losses are not observable).
    pub lost: Option<u64>,
    /// tw_enter lines (server namespace) / TcpExtTW while attached.
    pub events_per_tw: Option<Spread>,
    pub host_busy_pct: Option<Spread>,
    pub background_busy_pct: Option<Spread>,
    pub unavailable: Option<String>,
}

pub fn summarize(
    conds: &[Condition],
    runs: &[RunRecord],
    unavailable: &BTreeMap<Condition, String>,
    max_other: f64,
) -> Vec<Summary> {
    let baseline: BTreeMap<u32, &RunRecord> = runs
        .iter()
        .filter(|r| r.condition == Condition::Baseline)
        .map(|r| (r.round, r))
        .collect();
    let ratio = |r: &RunRecord| Some(r.wrk.rps / baseline.get(&r.round)?.wrk.rps);
    let cpu_ratio =
        |r: &RunRecord| Some(r.cpu_us_per_conn / baseline.get(&r.round)?.cpu_us_per_conn);
    // Neither this run nor its baseline shared the machine with other work.
    let undisturbed = |r: &RunRecord| {
        r.others_pct <= max_other
            && baseline
                .get(&r.round)
                .is_some_and(|b| b.others_pct <= max_other)
    };
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
                ratio: (c != Condition::Baseline).then(|| pick(&ratio)).flatten(),
                ratio_undisturbed: (c != Condition::Baseline)
                    .then(|| pick(&|r| if undisturbed(r) { ratio(r) } else { None }))
                    .flatten(),
                undisturbed_runs: mine.iter().filter(|r| undisturbed(r)).count(),
                cpu_ratio: (c != Condition::Baseline)
                    .then(|| pick(&cpu_ratio))
                    .flatten(),
                steal_pct: pick(&|r| Some(r.steal_pct)),
                others_pct: pick(&|r| Some(r.others_pct)),
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
                background_busy_pct: pick(&|r| r.background_busy_pct),
                unavailable: unavailable.get(&c).cloned(),
            }
        })
        .collect()
}

/// Per-program cost of one condition over all its runs, by program name (15 characters,
/// the kernel's limit): runs per TIME-WAIT, ns per run, ns per TIME-WAIT.
pub fn program_breakdown(cond: Condition, runs: &[RunRecord]) -> Option<String> {
    let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut tw = 0;
    for r in runs.iter().filter(|r| r.condition == cond) {
        let Some(bpf) = r.tracer.as_ref().and_then(|t| t.bpf.as_ref()) else {
            continue;
        };
        tw += r.tw;
        for p in &bpf.programs {
            let name = if p.name.is_empty() {
                format!("prog {}", p.id)
            } else {
                p.name.clone()
            };
            let e = by_name.entry(name).or_default();
            e.0 += p.ran.run_time_ns;
            e.1 += p.ran.run_cnt;
        }
    }
    if by_name.is_empty() || tw == 0 {
        return None;
    }
    let mut parts: Vec<(u64, String)> = by_name
        .into_iter()
        .filter(|(_, (_, cnt))| *cnt > 0)
        .map(|(name, (ns, cnt))| {
            let text = format!(
                "`{name}` {:.1} runs/TW × {:.0} ns = {:.0} ns/TW",
                cnt as f64 / tw as f64,
                ns as f64 / cnt as f64,
                ns as f64 / tw as f64
            );
            (ns, text)
        })
        .collect();
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    let list: Vec<String> = parts.into_iter().map(|(_, t)| t).collect();
    Some(format!(
        "{} BPF programs, all runs: {}.",
        cond.label(),
        list.join("; ")
    ))
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
         | same, undisturbed rounds only (n) | CPU per connection vs no tracer \
         | tracer CPU | BPF ns/run | BPF ns/TIME-WAIT | BPF CPU | steal | lost events |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for s in summaries {
        if let Some(why) = &s.unavailable {
            let why = why.lines().next().unwrap_or("").replace('|', "\\|");
            let _ = writeln!(
                md,
                "| {} | unavailable: {why} | | | | | | | | | | |",
                s.condition.label()
            );
            continue;
        }
        let fmt_ratio = |r: Spread| {
            format!(
                "{:.3} [{:.3}, {:.3}] ({:+.1} %)",
                r.median,
                r.min,
                r.max,
                (r.median - 1.0) * 100.0
            )
        };
        let (ratio, clean) = match (s.ratio, s.ratio_undisturbed) {
            (Some(r), Some(u)) => (
                fmt_ratio(r),
                format!("{} ({})", fmt_ratio(u), s.undisturbed_runs),
            ),
            (Some(r), None) => (fmt_ratio(r), "– (0)".into()),
            _ => ("1 (reference)".into(), format!("({})", s.undisturbed_runs)),
        };
        let pct = |v: f64| format!("{v:.1} %");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {ratio} | {clean} | {} | {} | {} | {} | {} | {} | {} |",
            s.condition.label(),
            opt(s.conn_per_s, |v| format!("{v:.0}")),
            opt(s.tw_per_s, |v| format!("{v:.0}")),
            s.cpu_ratio.map_or("–".into(), |r| format!(
                "{:.3} [{:.3}, {:.3}] ({:+.1} %)",
                r.median,
                r.min,
                r.max,
                (r.median - 1.0) * 100.0
            )),
            opt(s.tracer_cpu_pct, pct),
            opt(s.bpf_ns_per_run, |v| format!("{v:.0}")),
            opt(s.bpf_ns_per_tw, |v| format!("{v:.0}")),
            opt(s.bpf_cpu_pct, |v| format!("{v:.2} %")),
            opt(s.steal_pct, pct),
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
