//! `twtrace doctor`: what this kernel offers and which hook serves each signal, and why.
//! It really loads and attaches (then detaches) the programs: the only honest test.

use anyhow::{Context as _, Result};

use crate::{
    cli::Common,
    kernel::{self, btf::KernelBtf, layout::drop_reason},
    loader,
    plan::Trial,
    run,
    signals::Family,
};

pub fn run(common: &Common, verbose: bool, all_hooks: bool) -> Result<()> {
    kernel::preflight()?;
    let options = run::load_options(common, run::netns_arg(common)?.as_ref());
    if all_hooks {
        if options.forced.is_some() {
            anyhow::bail!("doctor --all-hooks tries every hook family: drop --hooks");
        }
        return every_hook(&options, verbose);
    }
    match loader::load(&options) {
        Ok(loaded) => report(&loaded, verbose),
        // A forced family that cannot serve: the report of what this kernel does allow
        // (the automatic choice) first, then why the forced one fails.
        Err(e) if options.forced.is_some() => {
            let auto = loader::LoadOptions {
                forced: None,
                ..options
            };
            if let Ok(loaded) = loader::load(&auto) {
                report(&loaded, verbose)?;
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// `doctor --all-hooks`: every hook of every signal, tried one at a time. An error when one
/// this kernel could run was refused (a fallback that would fail the day it is needed).
fn every_hook(options: &loader::LoadOptions, verbose: bool) -> Result<()> {
    use std::fmt::Write as _;
    let (facts, trials) = loader::try_every_hook(options)?;
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "kernel      {}", facts.release);
    let _ = writeln!(
        out,
        "every hook of every signal, loaded and attached one at a time, then detached:"
    );
    let mut refused = 0;
    for t in &trials {
        let outcome = match &t.outcome {
            Trial::Loaded => "loads".to_string(),
            Trial::NotHere(why) => format!("not here: {}", first_line(why, verbose)),
            Trial::Refused(why) => {
                refused += 1;
                format!("REFUSED: {}", first_line(why, verbose))
            }
        };
        let _ = writeln!(
            out,
            "  {:<22} {:<10} {outcome}",
            t.signal,
            t.family.as_str()
        );
        let _ = writeln!(out, "  {:<33} at: {}", "", t.points.join(", "));
        if let Some(limits) = t.limits {
            let _ = writeln!(out, "  {:<33} partial: {limits}", "");
        }
    }
    let loaded = trials
        .iter()
        .filter(|t| matches!(t.outcome, Trial::Loaded))
        .count();
    let _ = writeln!(
        out,
        "{loaded} of {} hooks load here, {refused} refused",
        trials.len()
    );
    print(&out)?;
    if refused > 0 {
        anyhow::bail!("{refused} hook(s) this kernel could run were refused (see above)");
    }
    Ok(())
}

fn first_line(why: &str, verbose: bool) -> &str {
    if verbose {
        why
    } else {
        why.lines().next().unwrap_or("")
    }
}

/// Prints the report, built in memory.
fn report(loaded: &loader::Loaded, verbose: bool) -> Result<()> {
    let mut out = String::new();
    write_report(loaded, verbose, &mut out);
    print(&out)
}

/// Writes a report to stdout at once. A reader gone (`twtrace doctor | head`) is no error
/// (println! would panic there); any other failure is (`> /dev/full`: a report lost without
/// a word, exit 0).
fn print(out: &str) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush());
    crate::sinks::reader_gone(written).context("writing the report to stdout")?;
    Ok(())
}

fn write_report(loaded: &loader::Loaded, verbose: bool, out: &mut String) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    macro_rules! println {
        ($($arg:tt)*) => {
            let _ = writeln!(out, $($arg)*);
        };
    }
    let f = &loaded.facts;
    println!("kernel      {}", f.release);
    println!("BTF         /sys/kernel/btf/vmlinux");
    println!(
        "lockdown    {}",
        f.lockdown.as_deref().unwrap_or("(no lockdown LSM)")
    );
    println!("HZ          {}", f.hz);
    println!(
        "kprobes     {}",
        f.caps
            .kprobe_blocker()
            .unwrap_or_else(|| "available".into())
    );
    // Trampolines may be there and every program still refused (e.g. by a security policy):
    // the plan below says why; this line must not read as "fentry works".
    let fentry_loaded = loaded
        .choices
        .iter()
        .any(|c| c.chosen == Some(Family::Fentry));
    println!(
        "fentry      {}",
        f.caps.fentry_blocker().unwrap_or_else(|| if fentry_loaded {
            "available".into()
        } else {
            "trampoline support present, but no fentry/fexit program loaded (see below)".into()
        })
    );
    if f.missing_frames.is_empty() {
        println!("call chains all exit-cause functions found in kallsyms");
    } else {
        println!(
            "call chains missing {} (inlined or renamed; an exit cause reads `unknown` only \
             when no other function of its kind is in the chain)",
            f.missing_frames.join(", ")
        );
    }
    if let Ok(btf) = KernelBtf::from_sysfs() {
        for r in [
            "TCP_RFC7323_PAWS",
            "TCP_RFC7323_TW_PAWS",
            "TCP_RFC7323_TSECR",
        ] {
            // Absent: younger than this kernel, or no drop reasons at all (before 5.17).
            let shown = drop_reason(&btf, r).map_or_else(|| "absent".into(), |v| v.to_string());
            println!("drop reason {r} = {shown}");
        }
        println!("TcpExtTW    {}", tw_counter_meaning(&btf));
    }
    println!(
        "skipped runs {}",
        if f.skips_counted {
            "counted by the kernel for every route, reported as lost (reason skipped_runs)"
        } else {
            "not counted for classic tracepoints and kprobes here (6.7+): their runs skipped \
             under another BPF program go unreported; fentry and tp_btf ones are"
        }
    );
    println!();
    let order: Vec<&str> = Family::ALL.iter().map(|f| f.as_str()).collect();
    println!("signal plan (best family first: {})", order.join(", "));
    let mut sized = Vec::new();
    for c in &loaded.choices {
        println!(
            "  {:<22} {:<10} {}",
            c.signal,
            c.hook_label(),
            c.description
        );
        for a in &c.attached {
            // A program shared between signals (the tp_btf dispatchers) is sized once.
            let size = if sized.contains(&a.program) {
                format!("{}, shared: sized above", a.program)
            } else {
                sized.push(a.program);
                program_size(&loaded.bpf, a.program)
            };
            println!("  {:<22}   attached: {} ({size})", "", a.point);
        }
        if let Some(limits) = c.limits {
            println!("  {:<22}   partial: {limits}", "");
        }
        let mut said = Vec::new();
        for (fam, why) in &c.rejected {
            let shown = if verbose {
                why.as_str()
            } else {
                why.lines().next().unwrap_or("")
            };
            // A family may offer several hooks: one passed over for the next of its family.
            let what = if c.chosen == Some(*fam) {
                format!("other {} hook passed over", fam.as_str())
            } else {
                format!("not {}", fam.as_str())
            };
            // A full hook and its partial fallback fail alike: one line says it.
            let line = format!("  {:<22}   {what}: {shown}", "");
            if !said.contains(&line) {
                println!("{line}");
                said.push(line);
            }
        }
    }
}

/// What a loaded program costs in the kernel, as the kernel reports it: its instructions after
/// verification (the verifier rewrites and inlines, so not the object's count), how many it
/// walked to prove it safe (5.16+), and its machine code. Every one of them runs on a hot path.
fn program_size(bpf: &aya::Ebpf, name: &str) -> String {
    let info = match bpf.program(name).map(|p| p.info()) {
        Some(Ok(info)) => info,
        Some(Err(e)) => return format!("{name}: no program info: {e}"),
        None => return format!("{name}: not in the object"),
    };
    let mut shown = match info.size_translated() {
        Some(bytes) => format!("{name}: {} instructions", bytes / 8),
        None => format!("{name}: size not reported"),
    };
    if let Some(walked) = info.verified_instruction_count() {
        shown += &format!(", {walked} verified");
    }
    if info.size_jitted() > 0 {
        shown += &format!(", {} B JIT", info.size_jitted());
    }
    shown
}

/// What nstat's TcpExtTW counts on this kernel, for operators comparing it with twtrace's
/// numbers. Before 5.18 it counted a TIME-WAIT when its timer expired (flagged per socket in
/// `inet_timewait_sock.tw_kill`, a field that left with the change), since then when it is
/// created.
fn tw_counter_meaning(btf: &KernelBtf) -> &'static str {
    if btf.has_member("inet_timewait_sock", "tw_kill") {
        "counts TIME-WAITs whose timer expired (before 5.18): compare it with exits `expired`, \
         not with enters"
    } else {
        "counts TIME-WAITs as they are created (with TcpExtTWKilled): compare it with enters"
    }
}
