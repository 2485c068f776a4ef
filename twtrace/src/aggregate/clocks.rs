//! PLACEHOLDER until the clock estimator lands (same API): counts one clock.
use serde::Serialize;

#[derive(Clone, Debug, Default)]
pub struct ClockConfig {}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub enum OffsetMode {
    Unknown,
}

impl OffsetMode {
    pub fn as_str(self) -> &'static str {
        "unknown"
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClockEstimate {
    pub clocks: u32,
    pub clocks_low: u32,
    pub clocks_high: u32,
    pub confidence: f64,
    pub rate_hz: Option<u32>,
    pub mode: OffsetMode,
    pub samples: u64,
}

pub struct ClockEstimator {
    samples: u64,
}

impl ClockEstimator {
    pub fn new(_cfg: ClockConfig) -> Self {
        Self { samples: 0 }
    }
    pub fn observe(&mut self, _t_ns: u64, _tsval: u32, _sport: u16) {
        self.samples += 1;
    }
    pub fn estimate(&self) -> ClockEstimate {
        ClockEstimate {
            clocks: u32::from(self.samples > 0),
            clocks_low: 0,
            clocks_high: 0,
            confidence: 0.0,
            rate_hz: None,
            mode: OffsetMode::Unknown,
            samples: self.samples,
        }
    }
}
