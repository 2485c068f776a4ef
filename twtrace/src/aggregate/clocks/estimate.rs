//! From the tracked lines to a [`ClockEstimate`]: merge near clusters into classes, decide
//! the offset mode, find the provable lower bound, and bound the count from above.
//! O(lines²) per call; nothing is mutated.

use super::graph::{Graph, UnionFind};
use super::track::{RateMask, Track};
use super::{ClockEstimate, ClockEstimator, Cluster, Line, OffsetMode};

/// Mode weights in the confidence (per 4-tuple gives only a lower bound; unknown is a guess).
const WEIGHT_PER_HOST: f64 = 1.0;
const WEIGHT_PER_TUPLE: f64 = 0.6;
const WEIGHT_UNKNOWN: f64 = 0.3;
/// Confirming SYNs for ~63 % of the evidence part of the confidence.
const EVIDENCE_SCALE: f64 = 8.0;
/// Fewest ports on shared lines (per host), or classes alone on their port (per 4-tuple), to
/// call a mode; the other kind must then be at most half as common.
const MODE_MIN: u64 = 3;

pub(super) fn estimate(e: &ClockEstimator, now: u64) -> ClockEstimate {
    let lines: Vec<&Line> = e
        .lines
        .iter()
        .filter(|l| e.alive(l.track.last.t_ns, now))
        .collect();
    let clusters: Vec<&Cluster> = e
        .clusters
        .iter()
        .filter(|c| lines.iter().any(|l| l.cluster == c.id))
        .collect();
    let cluster_index = |id: u32| clusters.iter().position(|c| c.id == id).unwrap_or(0);
    let samples: u64 = clusters.iter().map(|c| c.syns).sum();
    let dropped = dropped_in_window(e, now);
    if lines.is_empty() {
        return ClockEstimate {
            clocks: 0,
            clocks_low: 0,
            clocks_high: dropped,
            confidence: 0.0,
            rate_hz: None,
            mode: OffsetMode::Unknown,
            samples: 0,
            shared_ports: 0,
        };
    }

    let (class_of_cluster, classes) = near_classes(e, &clusters, &lines, cluster_index);
    let class_of_line: Vec<usize> = lines
        .iter()
        .map(|l| class_of_cluster[cluster_index(l.cluster)])
        .collect();
    let ports = ports_per_class(
        &clusters,
        &class_of_cluster,
        &lines,
        &class_of_line,
        classes,
    );
    let mode = if samples < e.cfg.min_samples {
        OffsetMode::Unknown
    } else {
        offset_mode(&ports)
    };

    let provable = provable_lower_bound(e, &lines, &class_of_line);
    let high = if e.dropped_overflow_until.is_some_and(|u| u >= now) {
        u32::MAX
    } else {
        to_u32(clusters.len() as u64 + u64::from(dropped))
    };
    let (clocks, low) = match mode {
        // Every class is a host. Sure of: those seen sharing an offset across ports (a
        // per-host clock each), plus what is provable among the lines alone on their port
        // (which may be per-4-tuple lines of fewer hosts, when the NAT mixes kernels).
        OffsetMode::PerHost => {
            let multi = ports.iter().filter(|&&p| p >= 2).count();
            let (alone, alone_class): (Vec<&Line>, Vec<usize>) = lines
                .iter()
                .zip(&class_of_line)
                .filter(|&(_, &c)| ports[c] < 2)
                .map(|(l, &c)| (*l, c))
                .unzip();
            let sure = multi + provable_lower_bound(e, &alone, &alone_class);
            (classes, provable.max(sure))
        }
        OffsetMode::PerTuple | OffsetMode::Unknown => (provable, provable),
    };
    let (clocks, low) = (to_u32(clocks as u64), to_u32(low as u64));
    let clocks = clocks.clamp(low, high.max(low));

    let tracks: Vec<&Track> = match mode {
        // Per host, a cluster's track holds all SYNs of one host: the better rate evidence.
        OffsetMode::PerHost => clusters.iter().map(|c| &c.track).collect(),
        _ => lines.iter().map(|l| &l.track).collect(),
    };
    let weight = match mode {
        OffsetMode::PerHost => WEIGHT_PER_HOST,
        OffsetMode::PerTuple => WEIGHT_PER_TUPLE,
        OffsetMode::Unknown => WEIGHT_UNKNOWN,
    };
    // SYNs beyond the first of each cluster confirmed a line someone had already started.
    let confirming = samples.saturating_sub(clusters.len() as u64) as f64;
    let evidence = 1.0 - (-confirming / EVIDENCE_SCALE).exp();
    let tightness = f64::from(low) / f64::from(high.max(1));
    ClockEstimate {
        clocks,
        clocks_low: low,
        clocks_high: high.max(clocks),
        confidence: (weight * evidence * (0.5 + 0.5 * tightness)).clamp(0.0, 1.0),
        rate_hz: dominant_rate(&tracks),
        mode,
        samples,
        shared_ports: shared_ports(&lines, &class_of_line),
    }
}

/// Classes of clusters: clusters near each other (either one's latest SYN within the "near"
/// bound of the other's line) may be one clock seen through an outlier, a route change, a
/// slew or an unusual rate, so they count once. Dense class numbers, and their count.
///
/// Two lines of one port that are near each other join their clusters' classes too. The
/// cluster test alone is not enough: a SYN linked to a cluster by chance (likeliest under
/// 1 MHz, for a cluster seen once) moves the cluster's latest SYN to another port's line,
/// and its first line would lose its near siblings on its own port, where a second class
/// proves a second clock. Line tracks hold one port's SYNs only, so they cannot be moved.
fn near_classes(
    e: &ClockEstimator,
    clusters: &[&Cluster],
    lines: &[&Line],
    cluster_index: impl Fn(u32) -> usize,
) -> (Vec<usize>, usize) {
    let near = |a: &Track, b: &Track| b.near(a.last, &e.tol) || a.near(b.last, &e.tol);
    let mut uf = UnionFind::new(clusters.len());
    for a in 0..clusters.len() {
        for b in a + 1..clusters.len() {
            if near(&clusters[a].track, &clusters[b].track) {
                uf.union(a, b);
            }
        }
    }
    for (i, la) in lines.iter().enumerate() {
        for lb in &lines[i + 1..] {
            if la.key == lb.key && la.cluster != lb.cluster && near(&la.track, &lb.track) {
                uf.union(cluster_index(la.cluster), cluster_index(lb.cluster));
            }
        }
    }
    uf.classes()
}

/// Per class, the ports seen sharing its offset: the most any of its clusters linked, or
/// its distinct ports now, whichever is larger (a near merge of two lines on one port is no
/// per-host evidence, so links are not summed).
fn ports_per_class(
    clusters: &[&Cluster],
    class_of_cluster: &[usize],
    lines: &[&Line],
    class_of_line: &[usize],
    classes: usize,
) -> Vec<u64> {
    let mut ports = vec![0u64; classes];
    for (c, &class) in clusters.iter().zip(class_of_cluster) {
        ports[class] = ports[class].max(u64::from(c.links));
    }
    let mut keys: Vec<(usize, u32)> = class_of_line
        .iter()
        .copied()
        .zip(lines.iter().map(|l| l.key))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut distinct = vec![0u64; classes];
    for (class, _) in keys {
        distinct[class] += 1;
    }
    for (p, d) in ports.iter_mut().zip(distinct) {
        *p = (*p).max(d);
    }
    ports
}

/// Per host when many ports landed on shared lines; per 4-tuple when nearly every class is
/// alone on its port. One per-4-tuple host with a chance link or two stays per 4-tuple.
fn offset_mode(ports_per_class: &[u64]) -> OffsetMode {
    let shared: u64 = ports_per_class.iter().filter(|&&n| n >= 2).sum();
    let solo = ports_per_class.iter().filter(|&&n| n < 2).count() as u64;
    if shared >= MODE_MIN && shared >= 2 * solo {
        OffsetMode::PerHost
    } else if solo >= MODE_MIN && solo >= 2 * shared {
        OffsetMode::PerTuple
    } else {
        OffsetMode::Unknown
    }
}

/// Size of a set of lines that are pairwise different clocks for sure (modulo the jitter
/// bound): lines of different classes on the same port (one 4-tuple has one offset per
/// clock, in either mode), with different proven rates (a host has one rate), or, if
/// enabled, with skews apart by more than their error bounds and guards.
fn provable_lower_bound(e: &ClockEstimator, lines: &[&Line], class: &[usize]) -> usize {
    let skews: Vec<_> = match e.cfg.skew_guard_ppm {
        Some(_) => lines.iter().map(|l| l.track.skew(&e.tol)).collect(),
        None => vec![None; lines.len()],
    };
    let guard = e.cfg.skew_guard_ppm.unwrap_or(0.0) * 1e-6;
    let rates: Vec<Option<u32>> = lines.iter().map(|l| l.track.proven_rate(&e.tol)).collect();
    let mut g = Graph::new(lines.len());
    for a in 0..lines.len() {
        for b in a + 1..lines.len() {
            if class[a] == class[b] {
                continue;
            }
            let same_port = lines[a].key == lines[b].key;
            let other_rate = matches!((rates[a], rates[b]), (Some(x), Some(y)) if x != y);
            let other_skew = match (skews[a], skews[b]) {
                (Some(x), Some(y)) if rates[a] == rates[b] => {
                    (x.centre - y.centre).abs() > x.half_width + y.half_width + 2.0 * guard
                }
                _ => false,
            };
            if same_port || other_rate || other_skew {
                g.add_edge(a, b);
            }
        }
    }
    g.greedy_clique()
}

/// Ports whose lines belong to two or more classes.
fn shared_ports(lines: &[&Line], class: &[usize]) -> u32 {
    let mut pairs: Vec<(u32, usize)> = lines
        .iter()
        .map(|l| l.key)
        .zip(class.iter().copied())
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let shared = pairs
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[0].0);
    let mut keys: Vec<u32> = shared.collect();
    keys.dedup();
    to_u32(keys.len() as u64)
}

/// The locked rate with the most SYNs behind it.
fn dominant_rate(tracks: &[&Track]) -> Option<u32> {
    let mut votes = [0u64; 8];
    for t in tracks {
        if t.rate().is_some() {
            let i = RateMask::trailing_zeros(t.mask) as usize;
            votes[i] += u64::from(t.samples);
        }
    }
    let (i, &v) = votes
        .iter()
        .enumerate()
        .max_by_key(|&(i, v)| (*v, std::cmp::Reverse(i)))?;
    (v > 0).then(|| super::RATES[i])
}

/// Clusters evicted for memory that were still within the window.
fn dropped_in_window(e: &ClockEstimator, now: u64) -> u32 {
    to_u32(e.dropped.iter().filter(|&&t| e.alive(t, now)).count() as u64)
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
