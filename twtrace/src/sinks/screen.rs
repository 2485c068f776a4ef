//! Fitting the live table to the terminal it redraws on. A rendering taller than the window
//! scrolls its top off at every refresh: the totals and the first rows of every section would
//! never be seen. So on a terminal the sections get as many rows as fit, at most `--top`, and
//! a last line says when some were left out. Output to a pipe or file is never cut.

use std::io;

/// A terminal's size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

impl Size {
    /// stdout's window, read again at each refresh so that a resized window is followed.
    pub fn of_stdout() -> Option<Size> {
        let (w, h) = terminal_size::terminal_size_of(io::stdout())?;
        Some(Size {
            width: usize::from(w.0),
            height: usize::from(h.0),
        })
    }
}

/// Appends to `out` what `compose(rows, out)` renders with the most rows per section, at most
/// `top`, that fits `size` (everything at `top` without a size). `compose` returns whether
/// some section had more rows than it was given.
pub fn fit(
    top: usize,
    size: Option<Size>,
    mut compose: impl FnMut(usize, &mut String) -> bool,
    out: &mut String,
) {
    let start = out.len();
    let Some(size) = size else {
        compose(top, out);
        return;
    };
    // The row under the last line holds the cursor: a text of `height` rows scrolls by one.
    let fits = |text: &str| screen_rows(text, size.width) < size.height;
    let mut render = |rows: usize, out: &mut String| {
        out.truncate(start);
        // Rows --top itself leaves out are the user's choice, not the terminal's.
        if compose(rows, out) && rows < top {
            cut_note(rows, top, out);
        }
    };
    // More rows never take fewer lines, so the most that fit is found by bisection (`--top`
    // may be large, and each try renders every section).
    // No section shows more rows than the window has: the search stays that small whatever
    // --top asks.
    let (mut low, mut high) = (1, top.min(size.height));
    render(top, out);
    if fits(&out[start..]) {
        return;
    }
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        render(mid, out);
        if fits(&out[start..]) {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    render(low, out);
    if !fits(&out[start..]) {
        // Not even one row per section: the bottom is cut, and the last line says so.
        cut_to(out, start, size);
    }
}

fn cut_note(rows: usize, top: usize, out: &mut String) {
    out.push_str(&format!(
        "(the window fits {rows} of --top {top} rows per section)\n"
    ));
}

/// Keeps the lines of `out[start..]` that fit in `size` with a last line that says how many
/// were left out.
fn cut_to(out: &mut String, start: usize, size: Size) {
    let text = out.split_off(start);
    // The clear-screen prefix goes first whatever is kept: without it the refresh would
    // scroll instead of redrawing.
    let clear = super::table::CLEAR_SCREEN;
    let text = match text.strip_prefix(clear) {
        Some(rest) => {
            out.push_str(clear);
            rest
        }
        None => &text,
    };
    let lines: Vec<&str> = text.lines().collect();
    let closing = |left: usize| format!("({left} more lines: the terminal is too small)\n");
    let mut used = line_rows(closing(lines.len()).trim_end(), size.width);
    let mut kept = 0;
    for line in &lines {
        let rows = line_rows(line, size.width);
        if used + rows >= size.height {
            break;
        }
        used += rows;
        kept += 1;
    }
    for line in &lines[..kept] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&closing(lines.len() - kept));
}

/// How many terminal rows `text` takes, `width` columns wide, its lines wrapped. An escape
/// sequence (the clear-screen prefix) takes no room.
pub fn screen_rows(text: &str, width: usize) -> usize {
    let text = text
        .strip_prefix(super::table::CLEAR_SCREEN)
        .unwrap_or(text);
    text.lines().map(|l| line_rows(l, width)).sum()
}

fn line_rows(line: &str, width: usize) -> usize {
    line.chars().count().div_ceil(width.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rendering of a header line and two sections of `rows` lines each, out of 5.
    fn sections(rows: usize, out: &mut String) -> bool {
        out.push_str("title\n");
        for section in ["a", "b"] {
            for i in 0..rows.min(5) {
                out.push_str(&format!("{section}{i}\n"));
            }
        }
        rows < 5
    }

    fn fitted(top: usize, size: Option<Size>) -> String {
        let mut out = String::from("kept ");
        fit(top, size, sections, &mut out);
        out.strip_prefix("kept ").unwrap().to_owned()
    }

    fn size(width: usize, height: usize) -> Option<Size> {
        Some(Size { width, height })
    }

    #[test]
    fn wrapped_lines_take_their_rows() {
        assert_eq!(screen_rows("", 80), 0);
        assert_eq!(screen_rows("\n", 80), 1);
        assert_eq!(screen_rows("abc\n\nde\n", 3), 3);
        assert_eq!(screen_rows("abcd\n", 3), 2);
        let cleared = format!("{}abc\n", super::super::table::CLEAR_SCREEN);
        assert_eq!(screen_rows(&cleared, 3), 1);
    }

    #[test]
    fn without_a_terminal_nothing_is_cut() {
        let text = fitted(20, None);
        assert_eq!(text.lines().count(), 11);
        assert!(!text.contains("the window fits"));
    }

    #[test]
    fn a_tall_terminal_shows_everything() {
        assert_eq!(fitted(20, size(80, 12)).lines().count(), 11);
    }

    #[test]
    fn a_short_terminal_gets_fewer_rows_per_section_and_a_note() {
        // 24 rows: title, 2 sections of 5 fit (11 < 24); 8 rows: title + 2x2 + note = 6 rows,
        // 3 per section would take 8 and leave no row for the cursor.
        let text = fitted(20, size(80, 8));
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[..5], ["title", "a0", "a1", "b0", "b1"]);
        assert_eq!(lines[5], "(the window fits 2 of --top 20 rows per section)");
        assert_eq!(lines.len(), 6);
        assert!(screen_rows(&text, 200) < 8);
    }

    #[test]
    fn the_note_counts_its_wrapped_rows() {
        // The 48-character note takes 2 rows at 30 columns: 1 + 2x2 + 2 = 7 < 8.
        let text = fitted(20, size(30, 8));
        assert!(text.starts_with("title\na0\na1\nb0\nb1\n("), "{text}");
        assert!(screen_rows(&text, 30) < 8);
    }

    #[test]
    fn too_small_for_one_row_each_cuts_the_bottom() {
        let text = fitted(20, size(200, 3));
        assert_eq!(text, "title\n(3 more lines: the terminal is too small)\n");
    }

    #[test]
    fn a_cut_keeps_the_clear_screen_and_counts_its_closing_rows() {
        let clear = super::super::table::CLEAR_SCREEN;
        let mut out = String::new();
        let compose = |_: usize, out: &mut String| {
            out.push_str(clear);
            sections(5, out)
        };
        // 2 rows: the closing line alone (one row at 200 columns), and the cursor.
        fit(20, size(200, 2), compose, &mut out);
        assert_eq!(
            out,
            format!("{clear}(11 more lines: the terminal is too small)\n")
        );
        // 20 columns: the closing line takes 3 rows, and the title one more.
        let mut out = String::new();
        fit(20, size(20, 5), compose, &mut out);
        assert_eq!(
            out,
            format!("{clear}title\n(10 more lines: the terminal is too small)\n")
        );
    }

    #[test]
    fn top_is_never_exceeded_and_its_own_cut_needs_no_note() {
        assert_eq!(fitted(1, size(80, 50)), "title\na0\nb0\n");
        assert_eq!(fitted(1, None), "title\na0\nb0\n");
    }
}
