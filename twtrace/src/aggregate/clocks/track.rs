//! One TSval line ("track"): samples `(arrival time, TSval)` that one clock produced with one
//! offset, and which of the usual tick rates they are still consistent with.
//!
//! All TSval arithmetic is modulo 2^32 ([`residual`] unwraps a difference around what the
//! rate predicts), so a clock that wraps while it is tracked stays one line.

/// The usual TSval clock rates in Hz (Kohno et al. 2005 list 2, 10, 100 and 1000 Hz; Linux
/// before 4.13 ticked TSval at its HZ: 100, 250, 300 or 1000; 1 Hz for very old stacks;
/// 1 MHz for Linux's `tcp_usec_ts` route feature). A track keeps the subset it still fits as
/// a bit mask: bit `i` stands for `RATES[i]`.
pub const RATES: [u32; 8] = [1, 2, 10, 100, 250, 300, 1000, 1_000_000];

/// Subset of [`RATES`], one bit per rate.
pub type RateMask = u8;
pub const ALL_RATES: RateMask = u8::MAX;

/// Rates up to this are "ms-class": 2^32 of their ticks span at least 49 days, so even a
/// generous "near" window stays a tiny share of the offset space (see [`Tolerance::near`]).
const MS_CLASS_MAX_HZ: u32 = 1000;

/// Matching tolerances in physical units (from `ClockConfig`), turned into ticks per rate.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Largest deviation of one SYN's one-way delay from the path's usual delay, seconds.
    pub jitter_s: f64,
    /// Largest clock skew, as a ratio (100 ppm = 1e-4).
    pub skew: f64,
    /// Extra offset slack, seconds, under which a separate line still counts as "near".
    pub near_s: f64,
    /// Extra rate slack (ratio) under which a separate ms-class line still counts as "near".
    pub near_rate: f64,
}

impl Tolerance {
    /// Largest |residual| in ticks between two samples of one clock `dt` seconds apart:
    /// 2 ticks of quantisation (both TSvals are floored), both samples' delay jitter (the
    /// difference of two delays is at most twice the jitter), and the drift that the skew
    /// allows over `dt`. Scales with the rate, as the tolerance of the method must.
    pub fn ticks(&self, r: f64, dt: f64) -> f64 {
        2.0 + self.jitter_ticks(r) + r * self.skew * dt.abs()
    }

    /// The part of [`Tolerance::ticks`] that does not grow with time.
    pub fn jitter_ticks(&self, r: f64) -> f64 {
        2.0 * self.jitter_s * r * (1.0 + self.skew)
    }

    /// Looser bound for "probably the same clock after all": a delay outlier or route change
    /// (`near_s`), or for ms-class rates a clock up to `near_rate` off every usual rate (a
    /// 1024 Hz clock, an NTP slew). Two unrelated offsets fall this close with a chance of
    /// about 2·near/2^32 (1e-5 at 1 kHz over 5 minutes). Not for 1 MHz: 2^32 µs is only
    /// 71 minutes, so a rate slack there would swallow a large share of all offsets.
    pub fn near(&self, rate: u32, dt: f64) -> f64 {
        let r = f64::from(rate);
        let rate_slack = if rate <= MS_CLASS_MAX_HZ {
            r * self.near_rate * dt.abs()
        } else {
            0.0
        };
        self.ticks(r, dt) + r * self.near_s + rate_slack
    }
}

/// [`Tolerance::ticks`] per usual rate, split into the part fixed per rate and the part that
/// grows with time, computed once per estimator: the quick reject ([`Track::fit_with`]) runs
/// for every cluster on every SYN that starts a line, about 32 times per SYN under churn with
/// per-4-tuple offsets. Same operations in the same order as `ticks`, so the same bounds.
#[derive(Clone, Copy, Debug)]
pub struct QuickBounds {
    rate: [f64; RATES.len()],
    /// `2 + jitter_ticks(rate)`.
    fixed: [f64; RATES.len()],
    /// `rate · skew`: ticks of drift per second of gap.
    drift: [f64; RATES.len()],
    /// Every bound grows with the rate and with the gap (no negative jitter or skew), so
    /// the fastest rate's bounds at the longest gap cover every track's: see [`Self::widest`].
    monotone: bool,
}

impl QuickBounds {
    pub fn new(tol: &Tolerance) -> Self {
        let rate = RATES.map(f64::from);
        Self {
            rate,
            fixed: rate.map(|r| 2.0 + tol.jitter_ticks(r)),
            drift: rate.map(|r| r * tol.skew),
            monotone: tol.jitter_s >= 0.0 && tol.skew >= 0.0,
        }
    }

    /// The TSval steps `[-lo, hi]` (ticks, whole numbers) outside of which no track whose
    /// latest sample is at most `dt` seconds (`dt >= 0`) before the SYN can take it:
    /// [`Track::fit_with`]'s quick reject refuses every step below `-bound` or above
    /// `rate·dt + bound` for the track's fastest rate, and both grow with the rate and the
    /// gap. f64 rounding is monotone, so the bounds computed here at the fastest usual rate
    /// and the longest gap are at least those of any track, and rounded up. `None` when the
    /// interval is not within one signed 32-bit range (the quick reject defers to the full
    /// fit there) or the bounds are not monotone.
    pub fn widest(&self, dt: f64) -> Option<(i64, i64)> {
        let top = RATES.len() - 1;
        if !self.monotone || dt < 0.0 {
            return None;
        }
        let bound = self.fixed[top] + self.drift[top] * dt;
        let hi = self.rate[top] * dt + bound;
        // Truncation plus one is at least the ceiling (both are positive).
        (hi < 2_147_483_648.0).then(|| (bound as i64 + 1, hi as i64 + 1))
    }
}

/// Seconds from `b` to `a` (negative when events arrive slightly out of order).
pub fn secs(a: u64, b: u64) -> f64 {
    // Monotonic ns stay below 2^63, so the wrapped difference read as signed is exact.
    a.wrapping_sub(b) as i64 as f64 * 1e-9
}

/// How far (ticks) the TSval difference `dts` (already wrapped) is from `r · dt`: the
/// expected ticks are reduced modulo 2^32 too and the difference read as signed, so the
/// result is correct across any number of TSval wraps as long as the true residual is
/// under 2^31 ticks (24 days at 1 kHz, 35 min at 1 MHz: far beyond any tolerance).
pub fn residual(r: f64, dt: f64, dts: u32) -> f64 {
    let expect = r * dt;
    // Truncation (not floor, a libm call on baseline x86-64) is fine: the fraction left,
    // in (-1, 1), is subtracted below. `as u32` then wraps, as TSval does.
    let whole = expect as i64;
    let frac = expect - whole as f64;
    f64::from(dts.wrapping_sub(whole as u32) as i32) - frac
}

/// One SYN: arrival time (monotonic ns) and TSval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub t_ns: u64,
    pub tsval: u32,
}

/// Skew of a locked track against the observer's clock, with a hard error bound.
#[derive(Clone, Copy, Debug)]
pub struct Skew {
    /// Estimated skew, ratio.
    pub centre: f64,
    /// The true skew is within `centre ± half_width` if the jitter bound held.
    pub half_width: f64,
}

/// A line `TSval = rate · t + offset` seen through its first and latest samples.
#[derive(Clone, Debug)]
pub struct Track {
    pub first: Sample,
    /// The sample with the latest arrival time.
    pub last: Sample,
    /// Rates every pair of samples so far was consistent with.
    pub mask: RateMask,
    pub samples: u32,
}

impl Track {
    pub fn new(s: Sample) -> Self {
        Self {
            first: s,
            last: s,
            mask: ALL_RATES,
            samples: 1,
        }
    }

    /// The rate, once only one usual rate fits.
    pub fn rate(&self) -> Option<u32> {
        (self.mask.count_ones() == 1).then(|| RATES[self.mask.trailing_zeros() as usize])
    }

    /// The rates under which `s` lies on this line, and a match score (residual over
    /// tolerance, lower is better), or `None`. This is the "snap the slope to the nearest
    /// usual rate if within tolerance" step: against the latest sample always (short gap,
    /// little skew drift), and against the first one while several rates still fit (long
    /// span: it tells close rates apart). Once one rate is left, only the latest sample
    /// counts, so a clock whose skew wanders (NTP) keeps its line.
    #[cfg(test)]
    pub fn fit(&self, s: Sample, tol: &Tolerance) -> Option<(RateMask, f64)> {
        self.fit_with(s, tol, &QuickBounds::new(tol))
    }

    /// [`Track::fit`] with the bounds of `tol` precomputed (`q`, from the same `tol`).
    #[inline]
    pub fn fit_with(&self, s: Sample, tol: &Tolerance, q: &QuickBounds) -> Option<(RateMask, f64)> {
        let dt_last = secs(s.t_ns, self.last.t_ns);
        let d_last = s.tsval.wrapping_sub(self.last.tsval);
        // Inlined quick exit first: a new line is tested against every cluster, and almost
        // all of them are unrelated offsets.
        if self.cannot_fit(dt_last, d_last, q) {
            return None;
        }
        self.fit_rates(s, dt_last, d_last, tol)
    }

    /// The per-rate part of [`Track::fit`], out of line: reached only by plausible samples.
    #[inline(never)]
    fn fit_rates(
        &self,
        s: Sample,
        dt_last: f64,
        d_last: u32,
        tol: &Tolerance,
    ) -> Option<(RateMask, f64)> {
        let dt_first = secs(s.t_ns, self.first.t_ns);
        let d_first = s.tsval.wrapping_sub(self.first.tsval);
        let locked = self.mask.count_ones() == 1;
        let mut mask = 0;
        let mut score = f64::INFINITY;
        // Only the rates still allowed, by their bits: a line's rate is soon pinned to one,
        // and testing all eight bits per sample was a twentieth of the estimator's cost.
        let mut left = self.mask;
        while left != 0 {
            let i = left.trailing_zeros() as usize;
            left &= left - 1;
            let r = f64::from(RATES[i]);
            let bound = tol.ticks(r, dt_last);
            let err = residual(r, dt_last, d_last).abs();
            if err > bound {
                continue;
            }
            if !locked && residual(r, dt_first, d_first).abs() > tol.ticks(r, dt_first) {
                continue;
            }
            mask |= 1 << i;
            score = score.min(err / bound);
        }
        (mask != 0).then_some((mask, score))
    }

    /// Quick exact exit for [`Track::fit`]: whatever rate of the mask, the TSval step lies
    /// within `[-bound, top·dt + bound]` (the bound grows with the rate), where `top` is the
    /// fastest rate still allowed. Unrelated offsets (almost every track a new line is tested
    /// against) land anywhere in 2^32 and fail here, before the per-rate loop.
    #[inline(always)]
    fn cannot_fit(&self, dt: f64, d: u32, q: &QuickBounds) -> bool {
        if self.mask == 0 {
            return true;
        }
        // The highest bit set is the fastest rate (RATES ascend).
        let i = (RateMask::BITS - 1 - self.mask.leading_zeros()) as usize;
        let (top, fixed, drift) = (q.rate[i], q.fixed[i], q.drift[i]);
        // Only where the whole interval is one signed 32-bit range does `d as i32` read the
        // true step; otherwise let the loop decide (it handles wraps). With dt >= 0, `hi` is
        // at least `bound`, so one test covers both.
        if dt < 0.0 {
            return false;
        }
        let bound = fixed + drift * dt;
        let hi = top * dt + bound;
        if hi >= 2_147_483_648.0 {
            return false;
        }
        let step = f64::from(d as i32);
        step < -bound || step > hi
    }

    /// Adds a sample that [`Track::fit`] accepted with `mask`.
    pub fn push(&mut self, s: Sample, mask: RateMask) {
        self.mask = mask;
        self.samples = self.samples.saturating_add(1);
        if s.t_ns >= self.last.t_ns {
            self.last = s;
        }
    }

    /// The rate, once at least three samples fit it and the track spans long enough that
    /// under every other usual rate its latest sample would not even be "near" its first:
    /// a rate that a delay outlier beyond `jitter` cannot have faked over a short span
    /// (20 ms of jitter over 25 ms passes for 300 Hz), nor two SYNs of two clocks that met
    /// by chance (likeliest under 1 MHz, whose tolerance is 1000 times wider), so it can
    /// prove that two lines are two clocks.
    pub fn proven_rate(&self, tol: &Tolerance) -> Option<u32> {
        let rate = self.rate()?;
        if self.samples < 3 {
            return None;
        }
        let dt = secs(self.last.t_ns, self.first.t_ns);
        let d = self.last.tsval.wrapping_sub(self.first.tsval);
        let excluded = RATES
            .iter()
            .filter(|&&other| other != rate)
            .all(|&other| residual(f64::from(other), dt, d).abs() > tol.near(other, dt));
        excluded.then_some(rate)
    }

    /// Whether `s` is within the "near" bound of this line under any rate it still fits.
    pub fn near(&self, s: Sample, tol: &Tolerance) -> bool {
        let dt = secs(s.t_ns, self.last.t_ns);
        let d = s.tsval.wrapping_sub(self.last.tsval);
        RATES.iter().enumerate().any(|(i, &rate)| {
            self.mask & (1 << i) != 0
                && residual(f64::from(rate), dt, d).abs() <= tol.near(rate, dt)
        })
    }

    /// Skew over the track's span (Kohno et al. 2005: the slope of TSval against the
    /// observer's clock, relative to the nominal rate), from the first and latest samples.
    /// The bound only holds if no accepted sample broke the jitter bound, which is why the
    /// caller widens it by a guard and only uses it when asked to.
    pub fn skew(&self, tol: &Tolerance) -> Option<Skew> {
        let rate = self.proven_rate(tol)?;
        let span = secs(self.last.t_ns, self.first.t_ns);
        if self.samples < 3 || span <= 0.0 {
            return None;
        }
        let r = f64::from(rate);
        let d = self.last.tsval.wrapping_sub(self.first.tsval);
        Some(Skew {
            centre: residual(r, span, d) / (r * span),
            half_width: (2.0 + tol.jitter_ticks(r)) / (r * span),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        jitter_s: 0.005,
        skew: 100e-6,
        near_s: 0.5,
        near_rate: 0.1,
    };
    const S: u64 = 1_000_000_000;

    fn at(t_s: f64, tsval: u32) -> Sample {
        Sample {
            t_ns: (t_s * 1e9) as u64 + 1000 * S,
            tsval,
        }
    }

    #[test]
    fn residual_unwraps_across_tsval_wrap() {
        // 0xffff_fff0 + 1000 ticks wraps to 984.
        let d = 984u32.wrapping_sub(0xffff_fff0);
        assert!((residual(1000.0, 1.0, d)).abs() < 1e-9);
        // Negative dt (out of order): -1 s at 1 kHz is -1000 ticks.
        let d = 0u32.wrapping_sub(1000);
        assert!((residual(1000.0, -1.0, d)).abs() < 1e-9);
        // 1 MHz over three wraps (about 3.6 h) with 7 ticks of error.
        let dt = 3.0 * 4_294.967_296 + 12.5;
        let ticks = (dt * 1e6) as u64 + 7;
        assert!((residual(1e6, dt, ticks as u32) - 7.0).abs() < 1e-3);
    }

    #[test]
    fn tolerance_scales_with_rate() {
        // 2 ticks + 2 × 5 ms of jitter + 100 ppm of 10 s.
        assert!((TOL.ticks(1000.0, 10.0) - (2.0 + 10.001 + 1.0)).abs() < 1e-9);
        assert!(TOL.ticks(1e6, 0.0) > 10_000.0);
        assert!(TOL.ticks(100.0, 0.0) < 3.1);
    }

    #[test]
    fn fit_locks_the_rate_and_rejects_other_offsets() {
        let mut t = Track::new(at(0.0, 5_000));
        // 2 ms later: 2 ticks at 1 kHz, but many rates still fit such a short gap.
        let (m, _) = t.fit(at(0.002, 5_002), &TOL).unwrap();
        assert!(m.count_ones() > 1);
        t.push(at(0.002, 5_002), m);
        assert_eq!(t.rate(), None);
        // 10 s later only 1 kHz fits.
        let (m, _) = t.fit(at(10.0, 15_001), &TOL).unwrap();
        t.push(at(10.0, 15_001), m);
        assert_eq!(t.rate(), Some(1000));
        assert_eq!(t.proven_rate(&TOL), Some(1000));
        // Another offset is not on the line, but a 300 ms outlier is near it.
        assert!(t.fit(at(20.0, 900_000), &TOL).is_none());
        assert!(t.fit(at(20.0, 25_300), &TOL).is_none());
        assert!(t.near(at(20.0, 25_300), &TOL));
        assert!(!t.near(at(20.0, 900_000), &TOL));
        // A 1024 Hz clock is near a 1 kHz line (2.4 % off).
        assert!(t.near(at(110.0, 15_001 + 102_400), &TOL));
    }

    #[test]
    fn a_short_span_locks_a_rate_but_does_not_prove_it() {
        // 13 ticks in 40 ms: 20 ms of jitter made a 1 kHz clock look like 300 Hz.
        let mut t = Track::new(at(0.0, 1000));
        for s in [at(0.025, 1011), at(0.04, 1013)] {
            let (m, _) = t.fit(s, &TOL).unwrap();
            t.push(s, m);
        }
        assert_eq!(t.rate(), Some(300));
        assert_eq!(t.proven_rate(&TOL), None);
        // Two SYNs 10 s apart pin 1 kHz, but two clocks can meet like that by chance.
        let mut t = Track::new(at(0.0, 0));
        let (m, _) = t.fit(at(10.0, 10_000), &TOL).unwrap();
        t.push(at(10.0, 10_000), m);
        assert_eq!(t.rate(), Some(1000));
        assert_eq!(t.proven_rate(&TOL), None);
    }

    #[test]
    fn skew_has_a_hard_bound() {
        // 50 ppm fast clock, 1000 s span, exact delays.
        let mut t = Track::new(at(0.0, 0));
        for k in 1..=10u32 {
            let s = at(
                f64::from(k) * 100.0,
                (f64::from(k) * 100_000.0 * 1.00005) as u32,
            );
            let (m, _) = t.fit(s, &TOL).unwrap();
            t.push(s, m);
        }
        let sk = t.skew(&TOL).unwrap();
        assert!((sk.centre - 50e-6).abs() <= sk.half_width);
        assert!(sk.half_width < 15e-6);
    }
}
