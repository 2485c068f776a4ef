//! The live table on a terminal: fitted to the window, its counts still the kernel's.

use std::{
    io::Read as _,
    os::fd::{FromRawFd as _, OwnedFd},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};

use super::*;

/// What twtrace writes first at each refresh on a terminal (cursor home, clear screen).
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// A pseudo-terminal of `rows` x `cols`: (controller, the terminal side).
fn pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd)> {
    let (mut controller, mut terminal) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; a null name and terminal mode are allowed.
    let r = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    ensure!(r == 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    Ok(unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    })
}

/// twtrace's live table with stdout and stderr on a terminal, as `sudo twtrace` in a shell;
/// killed if the test ends first.
struct OnTerminal {
    child: Child,
    screen: Arc<Mutex<String>>,
}

impl OnTerminal {
    fn spawn(args: &[&str], rows: u16, cols: u16) -> Result<Self> {
        let (controller, terminal) = pty(rows, cols)?;
        let mut cmd = Command::new(support::tracer_bin());
        cmd.args(args);
        if let Some(h) = std::env::var_os("TWTRACE_HOOKS") {
            cmd.arg("--hooks").arg(h);
        }
        if let Some(s) = std::env::var_os("TWTRACE_SIGNALS") {
            cmd.arg("--signals").arg(s);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(terminal.try_clone()?))
            .stderr(Stdio::from(terminal));
        let child = cmd.spawn().context("spawning twtrace on a terminal")?;
        // The terminal side's copies in `cmd` close with it: the reader then sees the end
        // (EIO) once twtrace is gone.
        drop(cmd);
        let screen = Arc::new(Mutex::new(String::new()));
        let sink = screen.clone();
        let mut controller = std::fs::File::from(controller);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = controller.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                sink.lock().unwrap().push_str(&text);
            }
        });
        Ok(Self { child, screen })
    }

    /// The renderings drawn completely so far (each ended by the next one's start).
    fn frames(&self) -> Vec<String> {
        let screen = self.screen.lock().unwrap();
        let mut frames: Vec<String> = screen.split(CLEAR_SCREEN).map(str::to_owned).collect();
        // What precedes the first rendering (start-up lines on stderr), and the rendering
        // still being drawn.
        frames.pop();
        if !frames.is_empty() {
            frames.remove(0);
        }
        frames
    }

    /// Waits up to `timeout` for a rendering that `want` accepts.
    fn wait_frame(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.frames().into_iter().rev().find(|f| want(f)) {
                return Ok(f);
            }
            ensure!(
                Instant::now() < deadline,
                "no such rendering within {timeout:?}; the terminal shows:\n{}",
                self.screen.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then its exit status within a minute.
    fn stop(mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "twtrace still running 60 s after SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rows `text` takes on a terminal `cols` wide (lines wrap).
fn screen_rows(text: &str, cols: usize) -> usize {
    text.lines()
        .map(|l| l.chars().count().div_ceil(cols).max(1))
        .sum()
}

/// The rows of the section whose header starts with `head`.
fn section_rows(frame: &str, head: &str) -> Result<usize> {
    let mut lines = frame.lines().skip_while(|l| !l.starts_with(head));
    ensure!(lines.next().is_some(), "no {head} section in:\n{frame}");
    Ok(lines.take_while(|l| !l.is_empty()).count())
}

/// 40 client TIME-WAITs, each on its own local port, under a live table on a terminal of 32
/// rows: the LOCAL_PORT section (40 rows at `--top` 20) cannot fit with the others, so every
/// section is cut to the rows that fit, a last line says how many, every rendering fits the
/// window (the totals and the first rows would otherwise scroll off at each refresh), and
/// the totals still equal the kernel's count.
#[test]
fn the_live_table_fits_a_short_terminal() -> Result<()> {
    const N: usize = 40;
    const ROWS: u16 = 32;
    const COLS: u16 = 160;
    let pair = NetnsPair::new("tty")?;
    let (srv, _server) = serve(&pair, Family::V4)?;
    let ns = pair.client_inode().to_string();
    let table = OnTerminal::spawn(&["--netns", &ns, "--interval", "0.2"], ROWS, COLS)?;
    table.wait_frame(READY, |f| f.contains("tw_created "))?;

    let before = netstat(pair.client_ns())?;
    connect_all(&pair, srv, N, CloseFirst::Client, None)?;
    let created = tw_created(&before, &netstat(pair.client_ns())?);
    assert_eq!(created, N as u64, "sanity: one TIME-WAIT per connection");

    let totals = format!("tw_created {created}  live {created} ");
    let frame = table.wait_frame(Duration::from_secs(10), |f| f.contains(&totals))?;
    let note = (frame.lines())
        .find(|l| {
            l.starts_with("(the window fits ") && l.ends_with(" of --top 20 rows per section)")
        })
        .with_context(|| format!("no note of the cut in:\n{frame}"))?;
    let shown: usize = note.split(' ').nth(3).context("rows")?.parse()?;
    assert!((1..20).contains(&shown), "{note}");
    assert_eq!(section_rows(&frame, "LOCAL_PORT")?, shown, "{frame}");
    assert_eq!(section_rows(&frame, "REMOTE_IP")?, 1, "{frame}");
    for f in table.frames() {
        assert!(
            screen_rows(&f, COLS.into()) < ROWS.into(),
            "a rendering taller than the window:\n{f}"
        );
    }
    let status = table.stop()?;
    assert!(status.success(), "twtrace exited with {status}");
    Ok(())
}
