//! twtrace's kernel programs. One module per signal; each holds every hook that can deliver it
//! (fentry, kprobe, tracepoint). User space decides per kernel which ones to load and attach.
#![no_std]
#![no_main]
// Inline assembly for context loads at constant offsets (`kernel::ctx_word`).
#![feature(asm_experimental_arch)]

mod emit;
mod kernel;
mod maps;
mod stack;

mod dispatch;

// Test support (never attached by twtrace).
mod hold_cpu;

mod paws;
mod port_exhaustion;
mod segment;
mod syn;
mod tw_enter;
mod tw_exit;
mod tw_flows;
mod tw_overflow;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
