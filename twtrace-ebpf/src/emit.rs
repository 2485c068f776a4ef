//! Writing events into the ring buffer without waking the reader per event.
//!
//! Each wake-up costs ~10 us in the kernel (irq_work + reader scheduling); at 20k TIME-WAITs/s
//! that alone is several percent of a core. Events are submitted with BPF_RB_NO_WAKEUP and the
//! reader is woken only once `wakeup_bytes` are waiting; user space also drains on a short timer.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use twtrace_common::{Event, LossSlot};

use crate::{
    kernel::{settings, zero_words},
    maps::{EVENTS, LOSSES},
};

/// Reserves an event slot, lets `fill` write it, and submits it. Counts a loss if the ring is
/// full, and then returns false.
#[inline(always)]
pub fn emit(slot: LossSlot, fill: impl FnOnce(&mut Event)) -> bool {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            let ev = entry.as_mut_ptr();
            // SAFETY: the reservation is exactly size_of::<Event>() bytes and 8-byte aligned,
            // and an all-zero Event is `Event::zeroed()`.
            unsafe {
                zero_words(ev);
                fill(&mut *ev);
            }
            let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= settings().wakeup_bytes {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(flags as u64);
            true
        }
        None => {
            count_loss(slot);
            false
        }
    }
}

/// Counts a loss. Returns the new per-CPU count, so callers can log at powers of two (a
/// diagnostic that never turns into a per-event cost).
#[inline(always)]
pub fn count_loss(slot: LossSlot) -> u64 {
    match LOSSES.get_ptr_mut(slot as u32) {
        // Per-CPU slot: no other writer, a plain increment is exact.
        Some(n) => unsafe {
            *n += 1;
            *n
        },
        None => 0,
    }
}
