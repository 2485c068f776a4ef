//! Kernel to user: the ring buffer, read through tokio, the per-CPU loss counters, and the
//! runs of our programs the kernel skipped (see `kernel::skipped_runs`).
//!
//! The kernel side does not wake us per event (BPF_RB_NO_WAKEUP), only when the ring passes a
//! fill threshold, so we also drain on a short timer. Records are decoded in place: nothing is
//! allocated per event.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use tokio::io::unix::AsyncFd;
use twtrace_common::{Event, LOSS_SLOTS, LossSlot};

use crate::{
    event::{LossReason, Record},
    kernel::skipped_runs::SkippedRuns,
};

/// Names of the loss slots (index = twtrace_common::LossSlot).
pub const LOSS_NAMES: [&str; LOSS_SLOTS as usize] = [
    "tw_enter",
    "tw_exit",
    "tw_overflow",
    "connect",
    "live_table_full",
    "paws",
    "syn",
];

/// Most records handed over at once (1.5 MB of events).
const MAX_BATCH: usize = 16_384;

pub struct Transport {
    ring: AsyncFd<RingBuf<MapData>>,
    losses: PerCpuArray<MapData, u64>,
    seen_losses: [u64; LOSS_SLOTS as usize],
    skipped: SkippedRuns,
    /// Records were left in the ring by the last drain (batch bound reached).
    more: bool,
}

impl Transport {
    /// Takes the ring and loss maps from `bpf`; `attached` names the programs whose skipped
    /// runs to report (with their kprobes' own misses where `kprobe_misses_counted`).
    pub fn new(
        bpf: &mut Ebpf,
        attached: impl IntoIterator<Item = &'static str>,
        kprobe_misses_counted: bool,
    ) -> Result<Self> {
        let ring = RingBuf::try_from(bpf.take_map("EVENTS").context("EVENTS map missing")?)?;
        let losses = PerCpuArray::try_from(bpf.take_map("LOSSES").context("LOSSES map missing")?)?;
        Ok(Self {
            // SAFETY: the RingBuf owns its map fd and AsyncFd owns the RingBuf, so the fd stays
            // open for as long as it is registered.
            ring: unsafe { AsyncFd::register(ring) }
                .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?,
            losses,
            seen_losses: [0; LOSS_SLOTS as usize],
            skipped: SkippedRuns::new(bpf, attached, kprobe_misses_counted),
            more: false,
        })
    }

    /// Waits until the kernel signals data or `poll` elapses, then appends every waiting record
    /// to `batch` (cleared first; its memory is reused). Returns how many were taken.
    ///
    /// A batch rather than a callback per record: the pipeline looks a few records ahead to
    /// prefetch the state they will touch (see `Pipeline::feed_batch`).
    pub async fn drain(&mut self, poll: Duration, batch: &mut Vec<Event>) -> Result<usize> {
        batch.clear();
        if self.more {
            // The last call stopped at the batch bound: take the rest without waiting.
            tokio::task::yield_now().await;
        } else if let Ok(guard) = tokio::time::timeout(poll, self.ring.readable_mut()).await {
            guard?.clear_ready();
        }
        self.more = false;
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the kernel wrote a whole Event; read_unaligned copes with any alignment.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
            // A bound on one batch, so that a ring kept full cannot grow it without limit;
            // the next call takes the rest without waiting.
            if batch.len() >= MAX_BATCH {
                self.more = true;
                break;
            }
        }
        Ok(batch.len())
    }

    /// Whether the last [`Transport::drain`] emptied the ring (it stops at a bound otherwise).
    pub fn caught_up(&self) -> bool {
        !self.more
    }

    /// Losses since the last call, as `lost` records for the non-zero ones: events our
    /// programs could not store (counted per CPU by them), then runs of them the kernel
    /// skipped; `now_ns` (CLOCK_MONOTONIC) is when they were found.
    pub fn new_losses(&mut self, now_ns: u64) -> Vec<Record> {
        let mut out = Vec::new();
        for (i, seen) in self.seen_losses.iter_mut().enumerate() {
            let Ok(per_cpu) = self.losses.get(&(i as u32), 0) else {
                continue;
            };
            let total: u64 = per_cpu.iter().sum();
            if total > *seen {
                let reason = if i == LossSlot::LiveTableFull as usize {
                    LossReason::TableFull
                } else {
                    LossReason::RingFull
                };
                out.push(Record::lost(now_ns, LOSS_NAMES[i], total - *seen, reason));
                *seen = total;
            }
        }
        for (program, count) in self.skipped.new_skips() {
            out.push(Record::lost(
                now_ns,
                program,
                count,
                LossReason::SkippedRuns,
            ));
        }
        out
    }
}
