//! Hook choice: for each signal, the best hook that actually loads and attaches on this kernel.
//!
//! Facts rule out some families up front (no kprobe PMU, functions absent from kallsyms/BTF);
//! everything else is decided by trying: a hook is chosen only once all of its programs are
//! loaded by the verifier and attached. Every rejection is kept with its reason for `doctor`.

use anyhow::{Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    maps::Array,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, ProgramError, TracePoint},
};
use std::collections::HashSet;
use twtrace_common::route;

use crate::{
    kernel::{
        btf::KernelBtf, caps::Caps, kallsyms::Kallsyms, layout::drop_reason, tracefs::Format,
    },
    signals::{self, Attach, Family, Hook, Need, Program, Signal},
};

/// What was decided for one signal.
#[derive(Debug, Clone)]
pub struct Choice {
    pub signal: &'static str,
    pub description: &'static str,
    /// The family now attached, if any.
    pub chosen: Option<Family>,
    /// Where its programs are attached.
    pub attached: Vec<Attached>,
    /// Families passed over, with why (in the order tried).
    pub rejected: Vec<(Family, String)>,
    /// Not traced: left out by `--signals`.
    pub off: bool,
    /// What the chosen hook does not see of the signal (a fallback that serves it in part).
    pub limits: Option<&'static str>,
    /// For the user, once (the loader prints it): the signal is served in part, or left out.
    pub warning: Option<String>,
}

/// One program of a chosen hook and where it is attached.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The attach point, as the start-up line and `doctor` spell it (e.g. `tp_btf timer_start`).
    pub point: String,
    /// The program's name in the object, to ask the kernel about it (`doctor`).
    pub program: &'static str,
}

impl Choice {
    /// The hook family serving the signal, or `off` (left out) or `none` (nothing can), as
    /// the start-up line and `doctor` spell it.
    pub fn hook_label(&self) -> &'static str {
        match (self.chosen, self.off) {
            (Some(f), _) => f.as_str(),
            (None, true) => "off",
            (None, false) => "none",
        }
    }

    /// Why nothing traces the signal (None when a hook does), as the live table words it.
    pub fn untraced_why(&self) -> Option<&'static str> {
        match (self.chosen, self.off) {
            (Some(_), _) => None,
            (None, true) => Some("left out by --signals"),
            (None, false) => Some("no hook on this kernel"),
        }
    }
}

pub struct Facts<'a> {
    pub btf: &'a Btf,
    pub kbtf: &'a KernelBtf,
    pub syms: &'a Kallsyms,
    pub caps: &'a Caps,
    /// kfree_skb names no dropping socket here (before 6.11), so the tp_btf route finds a
    /// TIME-WAIT's drops through its own table of live TIME-WAITs by connection
    /// (`route::TW_FLOWS`, sized by the loader; see twtrace-ebpf/src/tw_flows.rs).
    pub tw_flows: bool,
    /// Tracepoints whose format cannot be read (`KernelFacts`): classic hooks on them are out.
    pub unreadable_tracepoints: &'a [(&'static str, &'static str, String)],
}

/// Attaches every signal in `wanted` (all when empty). `forced` restricts the choice to one
/// family and makes any signal that family cannot serve an error.
pub fn attach_all(
    bpf: &mut Ebpf,
    facts: &Facts<'_>,
    forced: Option<Family>,
    wanted: &[&str],
) -> Result<Vec<Choice>> {
    let mut choices = Vec::new();
    let mut shared = Shared::default();
    for signal in signals::ALL {
        if !wanted.is_empty() && !wanted.contains(&signal.name) {
            choices.push(Choice {
                signal: signal.name,
                description: signal.description,
                chosen: None,
                attached: Vec::new(),
                rejected: vec![],
                off: true,
                limits: None,
                warning: None,
            });
            continue;
        }
        let mut choice = attach_signal(bpf, facts, signal, forced, &mut shared);
        if choice.chosen.is_none() {
            // Each reason once: a family's hooks often fail for the same one (a field the
            // kernel lacks rules out every program that reads it).
            let mut why: Vec<String> = Vec::new();
            for (f, r) in &choice.rejected {
                let line = format!("{}: {}", f.as_str(), r.lines().next().unwrap_or(""));
                if !why.contains(&line) {
                    why.push(line);
                }
            }
            let why = why.join("; ");
            match unserved(signal.name, forced, wanted) {
                Unserved::Fatal(msg) => bail!("{msg} ({why})"),
                Unserved::Warn(msg) => choice.warning = Some(format!("{msg} ({why})")),
            }
        }
        choices.push(choice);
    }
    if choices.iter().all(|c| c.chosen.is_none()) {
        bail!("no hook can serve any signal on this kernel; `twtrace doctor -v` says why");
    }
    // PAWS rejects and reset kills at TIME-WAIT need the flow table where kfree_skb names no
    // socket.
    if facts.tw_flows && shared.routes & (route::PAWS | route::TW_EXIT) != 0 {
        shared.routes |= route::TW_FLOWS;
    }
    if merges_exit_and_syn(&choices) {
        shared.routes |= route::MERGE_EXIT_SYN;
    }
    // The shared programs are already running; until now they served no signal.
    let mut routes: Array<_, u32> = bpf
        .map_mut("ROUTES")
        .ok_or_else(|| anyhow!("map ROUTES is missing from the eBPF object"))?
        .try_into()?;
    routes.set(0, shared.routes, 0)?;
    Ok(choices)
}

/// Whether TIME-WAIT exits and SYNs are both served by function probes, whose programs then
/// send a TIME-WAIT replaced by a SYN and that SYN as one record (`route::MERGE_EXIT_SYN`).
fn merges_exit_and_syn(choices: &[Choice]) -> bool {
    let by_probe = |name: &str| {
        choices
            .iter()
            .any(|c| c.signal == name && matches!(c.chosen, Some(Family::Fentry | Family::Kprobe)))
    };
    by_probe("tw_exit") && by_probe("syn")
}

/// What to do about a signal no hook could serve.
#[derive(Debug, PartialEq, Eq)]
enum Unserved {
    Fatal(String),
    Warn(String),
}

/// A signal the user asked for, by `--signals` or by forcing a family, is an error when it
/// cannot be served. With the automatic choice and no `--signals`, the others are still worth
/// tracing (a kernel without the TIME-WAIT PAWS drop reason and without function probes can
/// still show the TIME-WAIT lifecycle), so it is a warning, and `doctor` shows it as NONE.
fn unserved(signal: &str, forced: Option<Family>, wanted: &[&str]) -> Unserved {
    match forced {
        Some(f) => Unserved::Fatal(format!(
            "--hooks {} cannot serve signal `{signal}`; try --hooks auto",
            f.as_str()
        )),
        None if wanted.contains(&signal) => Unserved::Fatal(format!(
            "no hook can serve signal `{signal}` on this kernel"
        )),
        None => Unserved::Warn(format!(
            "no hook can serve signal `{signal}` on this kernel; tracing the other signals \
             (--signals without it silences this)"
        )),
    }
}

/// Stops the tp_btf programs from serving any signal (first step of shutdown, so that what
/// they left parked can be read without racing them).
pub fn silence(bpf: &mut Ebpf) -> Result<()> {
    if let Some(map) = bpf.map_mut("ROUTES") {
        let mut routes: Array<_, u32> = map.try_into()?;
        routes.set(0, 0, 0)?;
    }
    Ok(())
}

/// Programs shared between signals (the tp_btf dispatchers, the function probes on
/// `tcp_timewait_state_process`): attached once, by the first signal that chooses them, and
/// told which signals they serve through `ROUTES`.
#[derive(Default)]
struct Shared {
    attached: HashSet<&'static str>,
    routes: u32,
}

fn attach_signal(
    bpf: &mut Ebpf,
    facts: &Facts<'_>,
    signal: &Signal,
    forced: Option<Family>,
    shared: &mut Shared,
) -> Choice {
    let mut choice = Choice {
        signal: signal.name,
        description: signal.description,
        chosen: None,
        attached: Vec::new(),
        rejected: Vec::new(),
        off: false,
        limits: None,
        warning: None,
    };
    let families = match forced {
        Some(f) => vec![f],
        None => Family::ALL.to_vec(),
    };
    for family in families {
        // A family may offer several hooks (one function, or two where it is inlined).
        for hook in signal.hooks.iter().filter(|h| h.family == family) {
            let tried = precheck(facts, hook)
                .and_then(|()| load_hook(bpf, facts, hook, &mut shared.attached));
            match tried {
                Ok(attached) => {
                    match family {
                        Family::TpBtf => shared.routes |= signal.route,
                        Family::Tracepoint => shared.routes |= route::classic(signal.route),
                        Family::Fentry => shared.routes |= route::fentry(signal.route),
                        Family::Kprobe => shared.routes |= route::kprobe(signal.route),
                    }
                    choice.chosen = Some(family);
                    choice.attached = attached;
                    choice.limits = hook.limits;
                    choice.warning = hook
                        .limits
                        .map(|l| format!("{} on {}: {l}", signal.name, family.as_str()));
                    return choice;
                }
                Err(e) => {
                    // The whole reason (a verifier log) for `RUST_LOG=debug`; the error a forced
                    // family ends in quotes only its first line.
                    log::debug!("{} on {}: {e:#}", signal.name, family.as_str());
                    choice.rejected.push((family, format!("{e:#}")));
                }
            }
        }
    }
    choice
}

/// One hook of one signal as [`try_every_hook`] found it.
pub struct HookTrial {
    pub signal: &'static str,
    pub family: Family,
    /// Where its programs attach, in order.
    pub points: Vec<String>,
    /// What it does not see of the signal (a partial hook).
    pub limits: Option<&'static str>,
    pub outcome: Trial,
}

pub enum Trial {
    /// Every program loaded and attached (then detached again).
    Loaded,
    /// Not tried: this kernel cannot offer it (a family it refuses, a function it lacks).
    NotHere(String),
    /// Tried and refused (a verifier log, an attach error).
    Refused(String),
}

/// Loads and attaches every hook of every signal that this kernel could run, one at a time,
/// detaching each again: the automatic choice loads only the first that works, so a fallback
/// (a second hook for an inlined function, a partial one) would otherwise never be proven.
/// `wanted` names the signals (empty: all).
pub fn try_every_hook(bpf: &mut Ebpf, facts: &Facts<'_>, wanted: &[&str]) -> Vec<HookTrial> {
    let mut trials = Vec::new();
    let chosen = signals::ALL
        .iter()
        .filter(|s| wanted.is_empty() || wanted.contains(&s.name));
    for signal in chosen {
        for hook in signal.hooks {
            let outcome = match precheck(facts, hook) {
                Err(e) => Trial::NotHere(format!("{e:#}")),
                Ok(()) => match load_hook(bpf, facts, hook, &mut HashSet::new()) {
                    Ok(_) => {
                        for p in hook.programs {
                            unload(bpf, p);
                        }
                        Trial::Loaded
                    }
                    // This kernel's policy refuses the whole family: not the hook's fault.
                    Err(e) if e.chain().any(|c| c.is::<PolicyRefusal>()) => {
                        Trial::NotHere(format!("{e:#}"))
                    }
                    Err(e) => Trial::Refused(format!("{e:#}")),
                },
            };
            trials.push(HookTrial {
                signal: signal.name,
                family: hook.family,
                points: hook.programs.iter().map(|p| p.attach.describe()).collect(),
                limits: hook.limits,
                outcome,
            });
        }
    }
    trials
}

/// Loads and attaches all programs of a hook whose [`precheck`] passed, or none of them
/// (programs another signal already attached are reused and left alone).
fn load_hook(
    bpf: &mut Ebpf,
    facts: &Facts<'_>,
    hook: &Hook,
    attached: &mut HashSet<&'static str>,
) -> Result<Vec<Attached>> {
    let mut done = Vec::new();
    let mut mine = Vec::new();
    for p in hook.programs {
        let here = Attached {
            point: p.attach.describe(),
            program: p.name,
        };
        if attached.contains(p.name) {
            done.push(here);
            continue;
        }
        let t = std::time::Instant::now();
        if let Err(e) = load_attach(bpf, facts.btf, p) {
            for q in mine.iter().chain(std::iter::once(&p)) {
                unload(bpf, q);
            }
            return Err(e.context(format!("{} ({})", p.attach.describe(), p.name)));
        }
        mine.push(p);
        log::info!(
            "{} loaded and attached in {:?}",
            p.attach.describe(),
            t.elapsed()
        );
        done.push(here);
    }
    attached.extend(mine.iter().map(|p| p.name));
    Ok(done)
}

/// Refusals we can state without touching the kernel.
fn precheck(facts: &Facts<'_>, hook: &Hook) -> Result<()> {
    match hook.family {
        Family::Kprobe => {
            if let Some(b) = facts.caps.kprobe_blocker() {
                bail!("{b}");
            }
        }
        Family::Fentry => {
            if let Some(b) = facts.caps.fentry_blocker() {
                bail!("{b}");
            }
        }
        Family::TpBtf | Family::Tracepoint => {}
    }
    for need in hook.needs {
        match *need {
            Need::Symbol(name) => {
                if !facts.syms.contains(name) {
                    bail!("{name} is not in /proc/kallsyms");
                }
            }
            Need::TracepointField {
                category,
                name,
                field,
                why,
            } => {
                let has = Format::load(category, name).is_ok_and(|f| f.offset(field).is_ok());
                if !has {
                    bail!("tracepoint {category}:{name} has no `{field}` field: {why}");
                }
            }
            Need::DropReason { name, why } => {
                if drop_reason(facts.kbtf, name).is_none() {
                    bail!("this kernel has no drop reason SKB_DROP_REASON_{name}: {why}");
                }
            }
            Need::Enumerator { name, why } => {
                if facts.kbtf.enumerator(name).is_none() {
                    bail!("this kernel's BTF has no {name}: {why}");
                }
            }
            Need::FuncParam {
                function,
                param,
                why,
            } => {
                let params = facts.kbtf.func_params(function).unwrap_or_default();
                if !params.iter().any(|p| p == param) {
                    bail!("this kernel's {function} has no `{param}` parameter: {why}");
                }
            }
        }
    }
    for p in hook.programs {
        let function = match p.attach {
            Attach::Kprobe { function }
            | Attach::Kretprobe { function }
            | Attach::Fentry { function }
            | Attach::Fexit { function } => function,
            Attach::Tracepoint { category, name } => {
                let unreadable = facts
                    .unreadable_tracepoints
                    .iter()
                    .find(|(c, n, _)| *c == category && *n == name);
                if let Some((_, _, why)) = unreadable {
                    bail!("the format of tracepoint {category}:{name} cannot be read: {why}");
                }
                continue;
            }
            Attach::BtfTracepoint { .. } => continue,
        };
        if !facts.syms.contains(function) {
            bail!("{function} is not in /proc/kallsyms (inlined or renamed on this kernel)");
        }
        let is_trampoline = matches!(p.attach, Attach::Fentry { .. } | Attach::Fexit { .. });
        if is_trampoline && !facts.kbtf.has_func(function) {
            bail!("{function} has no BTF FUNC entry (fentry/fexit need one)");
        }
    }
    Ok(())
}

fn load_attach(bpf: &mut Ebpf, btf: &Btf, p: &Program) -> Result<()> {
    let prog = bpf
        .program_mut(p.name)
        .ok_or_else(|| anyhow!("program {} is missing from the eBPF object", p.name))?;
    let r: Result<(), ProgramError> = match p.attach {
        Attach::Tracepoint { category, name } => {
            let tp: &mut TracePoint = prog.try_into()?;
            tp.load().and_then(|()| tp.attach(category, name).map(drop))
        }
        Attach::Kprobe { function } | Attach::Kretprobe { function } => {
            let kp: &mut KProbe = prog.try_into()?;
            kp.load().and_then(|()| kp.attach(function, 0).map(drop))
        }
        Attach::Fentry { function } => {
            let f: &mut FEntry = prog.try_into()?;
            f.load(function, btf).and_then(|()| f.attach().map(drop))
        }
        Attach::Fexit { function } => {
            let f: &mut FExit = prog.try_into()?;
            f.load(function, btf).and_then(|()| f.attach().map(drop))
        }
        Attach::BtfTracepoint { name } => {
            let t: &mut BtfTracePoint = prog.try_into()?;
            t.load(name, btf).and_then(|()| t.attach().map(drop))
        }
    };
    r.map_err(explain)
}

/// The kernel refused a program by policy (lockdown, an LSM, a sandbox), before verifying it:
/// not a fault of the program.
#[derive(Debug)]
struct PolicyRefusal;

impl std::fmt::Display for PolicyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused by kernel policy (EPERM with an empty verifier log)")
    }
}

impl std::error::Error for PolicyRefusal {}

/// Makes the kernel's refusals readable; an EPERM with an empty verifier log is a policy
/// refusal (lockdown, LSM, sandbox), not a bug in the program.
fn explain(e: ProgramError) -> anyhow::Error {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &e
    {
        let log = verifier_log.to_string();
        if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
            return anyhow::Error::new(PolicyRefusal);
        }
        return anyhow!("verifier rejected it: {io_error}\n{log}");
    }
    anyhow!(e)
}

fn unload(bpf: &mut Ebpf, p: &Program) {
    let Some(prog) = bpf.program_mut(p.name) else {
        return;
    };
    // Unloading also detaches every link of the program.
    let _ = match p.attach {
        Attach::Tracepoint { .. } => <&mut TracePoint>::try_from(prog).map(|t| t.unload()),
        Attach::Kprobe { .. } | Attach::Kretprobe { .. } => {
            <&mut KProbe>::try_from(prog).map(|t| t.unload())
        }
        Attach::Fentry { .. } => <&mut FEntry>::try_from(prog).map(|t| t.unload()),
        Attach::Fexit { .. } => <&mut FExit>::try_from(prog).map(|t| t.unload()),
        Attach::BtfTracepoint { .. } => <&mut BtfTracePoint>::try_from(prog).map(|t| t.unload()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unservable_signal_fails_only_when_asked_for() {
        // Automatic choice, no --signals: the others are traced, with a warning.
        assert!(matches!(
            unserved("paws_reject", None, &[]),
            Unserved::Warn(m) if m.contains("`paws_reject`") && m.contains("--signals")
        ));
        // Named in --signals: an error.
        assert!(matches!(
            unserved("paws_reject", None, &["tw_enter", "paws_reject"]),
            Unserved::Fatal(m) if m.contains("no hook can serve signal `paws_reject`")
        ));
        // A forced family must serve everything it traces.
        assert!(matches!(
            unserved("paws_reject", Some(Family::TpBtf), &[]),
            Unserved::Fatal(m) if m.starts_with("--hooks tp_btf cannot serve signal `paws_reject`")
        ));
    }

    #[test]
    fn exits_and_syns_share_records_only_when_both_are_function_probes() {
        let choice = |signal: &'static str, chosen: Option<Family>| Choice {
            signal,
            description: "",
            chosen,
            attached: Vec::new(),
            rejected: Vec::new(),
            off: chosen.is_none(),
            limits: None,
            warning: None,
        };
        let with = |exit, syn| merges_exit_and_syn(&[choice("tw_exit", exit), choice("syn", syn)]);
        assert!(with(Some(Family::Fentry), Some(Family::Fentry)));
        assert!(with(Some(Family::Kprobe), Some(Family::Fentry)));
        // tp_btf merges in its own dispatcher; classic tracepoints do not merge.
        assert!(!with(Some(Family::TpBtf), Some(Family::TpBtf)));
        assert!(!with(Some(Family::Fentry), Some(Family::Tracepoint)));
        // A signal left out: nothing to merge with.
        assert!(!with(Some(Family::Fentry), None));
        assert!(!with(None, Some(Family::Fentry)));
    }
}
