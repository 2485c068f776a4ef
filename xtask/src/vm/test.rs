//! `cargo xtask vm-test`: builds the kernel-facing integration tests (e2e, cli, paws) and the
//! twtrace binary statically (the guest has no Rust runtime libraries; there is no musl target
//! here, so glibc +crt-static) and runs those suites inside each kernel.

use super::GuestOpts;
use super::rootfs::Add;
use super::util;
use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The integration tests that need a kernel, run in this order. `e2e` is required; the others
/// run when the package has them.
const SUITES: [&str; 3] = ["e2e", "cli", "paws"];
/// The e2e tests that wait out real TIME-WAIT timers (60 s; past a re-arm, about 100 s), idle
/// nearly all that time. The guest has one vCPU and runs each suite with one test thread, so
/// the first alone was a minute of every stage (13 stages in CI); each runs in a background
/// process of its own while the cli and paws suites run, and they are waited for before the
/// rest of e2e, whose CPU-holding tests must run with nothing beside. Whole names (`--exact`).
const BESIDE: [&str; 2] = [
    "real_expiry_after_sixty_seconds",
    "reread::a_time_wait_past_its_timer_is_read_again",
];

#[derive(Clone, Copy, ValueEnum)]
enum Hooks {
    /// Let twtrace pick the best hook per signal.
    Auto,
    /// Force kprobes (the fallback for kernels without fentry).
    Kprobe,
    /// Force BTF-typed raw tracepoints (what hosts without fentry and kprobes use). Before
    /// 6.11 (6.1) a TIME-WAIT's drops are found through twtrace's own table of live
    /// TIME-WAITs; from 6.11 (6.12) kfree_skb names the socket.
    #[value(name = "tp_btf")]
    TpBtf,
    /// Force classic tracepoints (the route of last resort; twtrace never picks it where
    /// tp_btf loads, so only forcing it proves it on an older kernel).
    Tracepoint,
}

#[derive(clap::Args)]
pub struct VmTestArgs {
    #[command(flatten)]
    guest: GuestOpts,
    /// Hook selection for twtrace, passed to the tests as TWTRACE_HOOKS.
    #[arg(long, value_enum, default_value = "auto")]
    hooks: Hooks,
    /// Trace only these signals (comma-separated), passed to the tests as TWTRACE_SIGNALS: for
    /// a forced family that cannot serve every signal on that kernel (e.g. classic tracepoints
    /// on 6.1 serve no PAWS at TIME-WAIT); name the tests that need only those signals.
    #[arg(long, value_name = "LIST")]
    signals: Option<String>,
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
    /// Extra arguments for every test binary, e.g. a test name filter.
    #[arg(last = true, value_name = "TEST_ARGS")]
    test_args: Vec<String>,
}

pub fn run(args: &VmTestArgs) -> Result<i32> {
    let (suites, twtrace) = build(args.release)?;
    let hooks = args.hooks.to_possible_value().context("hooks")?;
    // What the tests must see twtrace choose: these stock kernels allow fentry, so `auto` has
    // to pick it; a forced family must be used for every signal.
    let expect = match args.hooks {
        Hooks::Auto => "fentry",
        Hooks::Kprobe => "kprobe",
        Hooks::TpBtf => "tp_btf",
        Hooks::Tracepoint => "tracepoint",
    };
    let pkg_dir = util::workspace_root().join("twtrace");
    // Same paths as on the host, so env!("CARGO_BIN_EXE_twtrace") baked into the test binary is
    // valid in the guest too; cwd and CARGO_MANIFEST_DIR as `cargo test` would set them.
    let adds: Vec<Add> = suites
        .iter()
        .chain([&twtrace])
        .map(|p| Add {
            host: p.clone(),
            guest: p.to_string_lossy().into_owned(),
        })
        .collect();
    let mut env: Vec<(String, String)> = [
        ("TWTRACE_BIN", twtrace.to_string_lossy().into_owned()),
        ("TWTRACE_HOOKS", hooks.get_name().to_string()),
        ("TWTRACE_EXPECT_FAMILY", expect.to_string()),
        ("CARGO_MANIFEST_DIR", pkg_dir.to_string_lossy().into_owned()),
        ("RUST_BACKTRACE", "1".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    if let Some(s) = &args.signals {
        env.push(("TWTRACE_SIGNALS".to_string(), s.clone()));
    }
    let script = guest_script(&pkg_dir.to_string_lossy(), &suites, &args.test_args);
    super::run_in_kernels(&args.guest, &adds, &env, &script)
}

/// Builds the test executables and the twtrace binary (which cargo builds for integration
/// tests anyway) into target/vm, and returns their paths.
fn build(release: bool) -> Result<(Vec<PathBuf>, PathBuf)> {
    let root = util::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let names = present_suites(&cargo, &root)?;

    // Appending to RUSTFLAGS (not target.rustflags) because RUSTFLAGS would override those.
    // With --target, RUSTFLAGS reaches neither build scripts nor proc macros, and aya-build sets
    // CARGO_ENCODED_RUSTFLAGS (which wins) for the nested eBPF build.
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    rustflags.push_str(" -C target-feature=+crt-static");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .env("RUSTFLAGS", rustflags.trim())
        .args(["test", "--no-run", "--package", "twtrace"])
        .args(names.iter().flat_map(|n| ["--test", n]))
        .args([
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        // A separate target dir: different RUSTFLAGS would otherwise invalidate the host build.
        .arg("--target-dir")
        .arg(root.join("target/vm"))
        .stdout(Stdio::piped());
    if release {
        cmd.arg("--release");
    }
    eprintln!("[vm-test] building static test binaries into target/vm");
    let out = cmd.output().context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the tests failed ({})", out.status);
    }
    let (mut found, mut twtrace) = (Vec::new(), None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let has = |k: &str| kinds.iter().any(|x| x == k);
        match msg["target"]["name"].as_str() {
            Some(n) if has("test") && names.contains(&n) => {
                found.push((n.to_owned(), PathBuf::from(exe)))
            }
            Some("twtrace") if has("bin") => twtrace = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    // In SUITES order, whatever order cargo reported them in.
    let mut suites = Vec::new();
    for n in &names {
        let (_, p) = found
            .iter()
            .find(|(f, _)| f == n)
            .with_context(|| format!("no {n} test binary in cargo's output"))?;
        suites.push(p.clone());
    }
    let twtrace = twtrace.context("cargo did not report the twtrace binary")?;
    for bin in suites.iter().chain([&twtrace]) {
        ensure_static(bin)?;
    }
    Ok((suites, twtrace))
}

/// The SUITES the twtrace package has; a clear message if it lacks the e2e suite.
fn present_suites(cargo: &std::ffi::OsStr, root: &Path) -> Result<Vec<&'static str>> {
    let meta = util::output(Command::new(cargo).current_dir(root).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))?;
    let meta: serde_json::Value = serde_json::from_str(&meta).context("cargo metadata")?;
    let packages = meta["packages"].as_array().cloned().unwrap_or_default();
    let twtrace = packages
        .iter()
        .find(|p| p["name"] == "twtrace")
        .context("no twtrace package in the workspace")?;
    let targets = twtrace["targets"].as_array().cloned().unwrap_or_default();
    let is_test = |name: &str| {
        targets.iter().any(|t| {
            t["name"] == name
                && t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|x| x == "test"))
        })
    };
    if !is_test("e2e") {
        bail!(
            "no e2e test binary: the twtrace package has no `e2e` integration test (twtrace/tests/e2e/)"
        );
    }
    Ok(SUITES.into_iter().filter(|n| is_test(n)).collect())
}

/// The guest has the host's glibc only for the iproute2 tools; a dynamically linked test binary
/// would still work (xtask copies ldd's libraries) but would hide a broken static build.
fn ensure_static(bin: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !text.contains("statically linked") {
        bail!(
            "{} is dynamically linked despite +crt-static",
            bin.display()
        );
    }
    Ok(())
}

/// The guest command: every suite with one test thread, and each of [`BESIDE`] in the background
/// while the suites after e2e run, before e2e's other tests. Only when the test arguments
/// filter nothing in (only `--skip NAME` and output flags): a run of named tests runs as asked.
fn guest_script(dir: &str, suites: &[PathBuf], test_args: &[String]) -> String {
    let args: String = test_args
        .iter()
        .map(|a| format!(" {}", util::shell_quote(a)))
        .collect();
    let run = |bin: &PathBuf, extra: &str| {
        format!(
            "{} --test-threads=1{args}{extra}",
            util::shell_quote(&bin.to_string_lossy())
        )
    };
    let cd = format!("mkdir -p {dir} && cd {dir}", dir = util::shell_quote(dir));
    let (e2e, others) = suites.split_first().expect("e2e is always built");
    if others.is_empty() || !only_skips(test_args) {
        let runs: Vec<String> = suites.iter().map(|b| run(b, "")).collect();
        return format!("{cd} && {}", runs.join(" && "));
    }
    let mut s = format!("{cd} || exit 1\n");
    // libtest refuses a flag given twice.
    let exact = if test_args.iter().any(|a| a == "--exact") {
        ""
    } else {
        " --exact"
    };
    for (i, name) in BESIDE.iter().enumerate() {
        s += &format!(
            "{} > /tmp/beside{i}.log 2>&1 &\nbeside{i}=$!\n",
            run(e2e, &format!("{exact} {name}"))
        );
    }
    s += "rc=0\n";
    for bin in others {
        s += &format!("{} || rc=1\n", run(bin, ""));
    }
    for (i, name) in BESIDE.iter().enumerate() {
        s += &format!(
            "wait $beside{i} || rc=1\necho '--- e2e {name} (ran beside the suites above):'\n\
             cat /tmp/beside{i}.log\n"
        );
    }
    let skips: String = BESIDE.iter().map(|n| format!(" --skip {n}")).collect();
    s += &format!("[ $rc -eq 0 ] && {}", run(e2e, &skips));
    s
}

/// Whether libtest arguments select every test but skipped ones (no name filter), and skip
/// not [`BESIDE`] (which runs with `--exact`, where a skip must name a test in full). Skips
/// may be whole names (`--exact`): the no-PAWS stages name the tests they leave out so.
fn only_skips(test_args: &[String]) -> bool {
    let mut it = test_args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip" => match it.next() {
                Some(skip) if !BESIDE.iter().any(|b| b.contains(skip.as_str())) => {}
                _ => return false,
            },
            "--exact" | "--nocapture" | "--show-output" | "--quiet" | "-q" => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suites() -> Vec<PathBuf> {
        ["/t/e2e", "/t/cli", "/t/paws"].map(PathBuf::from).into()
    }

    #[test]
    fn the_long_wait_runs_beside_the_other_suites() {
        let s = guest_script("/w", &suites(), &["--skip".into(), "nat".into()]);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[1].starts_with("/t/e2e --test-threads=1 --skip nat --exact real_expiry"));
        assert!(lines[1].ends_with(" > /tmp/beside0.log 2>&1 &"), "{s}");
        assert!(lines[3].starts_with("/t/e2e --test-threads=1 --skip nat --exact reread::a_time"));
        assert!(lines[3].ends_with(" > /tmp/beside1.log 2>&1 &"), "{s}");
        let cli = s.find("/t/cli").unwrap();
        let paws = s.find("/t/paws").unwrap();
        let wait = s.find("wait $beside0").unwrap();
        let wait1 = s.find("wait $beside1").unwrap();
        let rest = s.find("--skip real_expiry_after_sixty_seconds").unwrap();
        assert!(
            cli < paws && paws < wait && wait < wait1 && wait1 < rest,
            "{s}"
        );
        assert!(
            s.ends_with(
                "--skip nat --skip real_expiry_after_sixty_seconds \
                 --skip reread::a_time_wait_past_its_timer_is_read_again"
            ),
            "{s}"
        );
    }

    #[test]
    fn a_name_filter_runs_as_asked() {
        let s = guest_script(
            "/w",
            &suites(),
            &["skipped_runs".into(), "--nocapture".into()],
        );
        assert!(!s.contains("beside") && !s.contains(BESIDE[0]), "{s}");
        assert_eq!(
            s.matches("--test-threads=1 skipped_runs --nocapture")
                .count(),
            3
        );
        let only_e2e = guest_script("/w", &suites()[..1], &[]);
        assert!(!only_e2e.contains(BESIDE[0]), "{only_e2e}");
        assert!(!only_skips(&["--skip".into()]));
        assert!(!only_skips(&["--skip".into(), "real_expiry".into()]));
        assert!(!only_skips(&["--skip".into(), "reread::a_time".into()]));
        assert!(only_skips(&[]));
    }

    #[test]
    fn whole_name_skips_give_exact_once() {
        let args: Vec<String> = ["--exact", "--skip", "nat::nat_clients"]
            .map(Into::into)
            .into();
        assert!(only_skips(&args));
        let s = guest_script("/w", &suites(), &args);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[1],
            "/t/e2e --test-threads=1 --exact --skip nat::nat_clients real_expiry_after_sixty_seconds \
             > /tmp/beside0.log 2>&1 &",
        );
        assert!(s.lines().all(|l| l.matches("--exact").count() <= 1), "{s}");
        assert!(
            s.ends_with(
                "--exact --skip nat::nat_clients --skip real_expiry_after_sixty_seconds \
                 --skip reread::a_time_wait_past_its_timer_is_read_again"
            ),
            "{s}"
        );
    }
}
