//! Call-chain classification: which kernel function led here.
//!
//! Tracepoints say *that* a TIME-WAIT timer was cancelled or a socket closed, not *why*. The
//! call chain does: a cancel under `__mod_timer` is a re-arm, under `tcp_timewait_state_process`
//! a kill by RST, under `__inet_check_established` a reuse by connect(), and so on. User space
//! fills [`crate::kernel::RANGES`] with the text ranges of those functions (kallsyms); here the
//! innermost recognised frame wins. Only a few frames are walked, and only for TIME-WAIT timers.

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_stack};
use twtrace_common::{MAX_CODE_RANGES, STACK_DEPTH};

use crate::kernel::{range, zero_words};

/// Bit for a class in a `wanted` mask.
pub const fn bit(class: u8) -> u64 {
    1 << (class & 63)
}

/// Returns the class of the innermost frame whose class is in `wanted`, or 0 when none is.
#[inline(always)]
pub fn classify<C: EbpfContext>(ctx: &C, wanted: u64) -> u8 {
    classify_n::<C, STACK_DEPTH>(ctx, wanted)
}

/// [`classify`] looking at the innermost frame only: unwinding stops there, so it is cheap.
/// Enough where the immediate caller decides (a timer expiring or being re-armed).
#[inline(always)]
pub fn classify_first<C: EbpfContext>(ctx: &C, wanted: u64) -> u8 {
    classify_n::<C, 1>(ctx, wanted)
}

#[inline(always)]
fn classify_n<C: EbpfContext, const N: usize>(ctx: &C, wanted: u64) -> u8 {
    // Zeroed with word stores (not a memset call): the helper zero-fills what it does not
    // write, but older verifiers (Debian's 5.10) take its buffer for memory it reads and
    // refuse an uninitialised one; it passed only while other code happened to have written
    // those stack slots first, until a layout change in tw_exit_fentry.
    let mut frames = core::mem::MaybeUninit::<[u64; N]>::uninit();
    unsafe { zero_words(frames.as_mut_ptr()) };
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            frames.as_mut_ptr().cast(),
            core::mem::size_of::<[u64; N]>() as u32,
            0,
        )
    };
    if n <= 0 {
        return 0;
    }
    // SAFETY: written (or zeroed) by the helper.
    let frames = unsafe { frames.assume_init() };
    let n = (n as usize) / 8;
    for (i, &ip) in frames.iter().enumerate() {
        if i >= n {
            break;
        }
        for r in 0..MAX_CODE_RANGES {
            let cr = range(r);
            if cr.start == 0 {
                break;
            }
            if ip >= cr.start && ip < cr.end && wanted & bit(cr.class as u8) != 0 {
                return cr.class as u8;
            }
        }
    }
    0
}
